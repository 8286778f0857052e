"""/metrics in the Prometheus text format (prometheus-client).

Two kinds of series:

- **Fleet gauges**, read from the database at each scrape (`FleetCollector`), so every
  control plane process of a fleet reports the same values: tenants by node,
  template and state; each node's memory, disk, KSM, load, state and cost.
- **Process counters** of this control plane process (`ApiMetrics`): copies, deletes,
  copy latency, API errors by code, requests by endpoint and status. Prometheus sums
  them across processes (`sum without(instance)`).

Router requests by status come from the router's own registry (`hoody.router`): in
`hoody up` the router runs in this process and is exported here; a separate
`hoody router` serves them on `--metrics-listen`.

Labels are bounded: node and template names (operator-made), states, endpoint path
templates, HTTP status codes. No series per tenant.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select

from hoody.control.base import LIVE
from hoody.control.db import Container
from hoody.dashboard.figures import FleetFigures
from hoody.router.metrics import RouterCollector

__all__ = ["ApiMetrics", "FleetCollector", "registry"]

_NODE_GAUGES = (
    ("memory_total_bytes", "Node memory."),
    ("memory_available_bytes", "Node memory available (MemAvailable)."),
    ("tenant_memory_bytes", "Memory the node's running tenants use (their cgroups)."),
    ("disk_total_bytes", "Node pool size."),
    ("disk_free_bytes", "Node pool free bytes."),
    ("disk_tenants_bytes", "Bytes the tenants own (their deltas from templates)."),
    ("disk_shared_bytes", "Template bytes the tenants read without owning them."),
    ("disk_templates_bytes", "Template versions stored on the node (once each)."),
    ("ksm_profit_bytes", "KSM general_profit: merged memory less its metadata."),
    ("load_1m", "1-minute load average."),
    ("cpus", "CPUs."),
)


class FleetCollector(Collector):
    """Fleet gauges, read from the store on each scrape."""

    def __init__(self, figures: FleetFigures) -> None:
        self.figures = figures

    def collect(self) -> Iterator[Metric]:
        summary = self.figures.summary()
        with self.figures.store.read() as s:
            rows = s.execute(
                select(Container.node, Container.template, Container.state, func.count())
                .where(Container.state.in_(LIVE))
                .group_by(Container.node, Container.template, Container.state)
            ).all()
        tenants = GaugeMetricFamily(
            "hoody_tenants",
            "Tenants by node, template and state.",
            labels=["node", "template", "state"],
        )
        for node, template, state, count in rows:
            tenants.add_metric([node, template, state], int(count))
        yield tenants
        up = GaugeMetricFamily(
            "hoody_node_state", "1 for the node's current state.", labels=["node", "state"]
        )
        cost = GaugeMetricFamily(
            "hoody_node_monthly_cost", "What the node costs a month.", labels=["node", "currency"]
        )
        ksmd = CounterMetricFamily(
            "hoody_node_ksmd_cpu_seconds", "CPU seconds ksmd spent on the node.", labels=["node"]
        )
        gauges = {
            key: GaugeMetricFamily(f"hoody_node_{key}", doc, labels=["node"])
            for key, doc in _NODE_GAUGES
        }
        for n in summary["nodes"]:
            up.add_metric([n["name"], n["state"]], 1)
            if n["monthly_cost"] is not None:
                cost.add_metric([n["name"], n["currency"]], n["monthly_cost"])
            ksmd.add_metric([n["name"]], n["ksmd_cpu_seconds"])
            for key, family in gauges.items():
                family.add_metric([n["name"]], float(n[key]))
        yield up
        yield cost
        yield ksmd
        yield from gauges.values()
        head = summary["headline"]
        more = GaugeMetricFamily(
            "hoody_fleet_more_tenants",
            "More tenants the fleet holds at today's memory use per tenant.",
        )
        more.add_metric([], float(head["more_tenants"] or 0))
        yield more


class ApiMetrics:
    """Counters of this process's API calls."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "hoody_api_requests",
            "API requests by endpoint (path template) and status.",
            ["method", "endpoint", "status"],
            registry=registry,
        )
        self.errors = Counter(
            "hoody_api_errors", "API errors by error code.", ["code"], registry=registry
        )
        self.copies = Counter(
            "hoody_copies",
            "Copies by template and result.",
            ["template", "result"],
            registry=registry,
        )
        self.deletes = Counter(
            "hoody_deletes", "Container deletes by result.", ["result"], registry=registry
        )
        self.copy_seconds = Histogram(
            "hoody_copy_duration_seconds",
            "Copy request to container running, seconds (successful copies).",
            ["template"],
            buckets=(0.025, 0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1, 1.5, 2.5, 5, 10, 30),
            registry=registry,
        )

    def observe(
        self,
        method: str,
        endpoint: str,
        status: int,
        seconds: float,
        *,
        code: str | None = None,
        template: str | None = None,
    ) -> None:
        self.requests.labels(method, endpoint, str(status)).inc()
        if code:
            self.errors.labels(code).inc()
        ok = status < 400
        if endpoint == "/containers/{template}/copy":
            # Only templates that exist become labels: a failed copy of a made-up name
            # must not mint a series.
            label = template if ok and template else "-"
            self.copies.labels(label, "ok" if ok else "error").inc()
            if ok:
                self.copy_seconds.labels(label).observe(seconds)
        elif endpoint == "/containers/{cid}" and method == "DELETE":
            self.deletes.labels("ok" if ok else "error").inc()


def registry(
    figures: FleetFigures, reg: CollectorRegistry | None = None
) -> tuple[CollectorRegistry, ApiMetrics]:
    """`reg` (a new registry by default) with the fleet gauges and this process's API
    counters added."""
    reg = reg or CollectorRegistry(auto_describe=False)
    reg.register(FleetCollector(figures))
    reg.register(RouterCollector())  # the routers of this process (`hoody up`), if any
    return reg, ApiMetrics(reg)
