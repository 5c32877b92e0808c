"""Prometheus metrics, rendered at /__gogeta/metrics by prometheus-client.

Requests by status class and by domain, upstream latency, open connections, and the
resolver's own counters (events applied, reloads, wake-ups...) read from `describe()`.
Label values are bounded: a domain is a label only when the resolver knew it and only
for the first `MAX_DOMAINS` domains a process sees (then `other`); an unknown hostname
counts as `unknown`, so a scanner inventing Host headers cannot grow the series.

Under gunicorn, metrics cover every worker: with `PROMETHEUS_MULTIPROC_DIR` set (by
`gunicorn.conf.py`) each process writes its values to files there and a scrape, answered
by any worker, merges them. The resolver's numbers are per worker (label `pid`), copied
into those files every few seconds by each worker and at scrape time by the scraping one.
"""

from __future__ import annotations

import os
import re
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
    multiprocess,
)

MAX_DOMAINS = 200
REFRESH_SECONDS = 5.0
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class Metrics:
    def __init__(self) -> None:
        disable_created_metrics()  # type: ignore[no-untyped-call]  # `*_created`: noise
        self.multiprocess = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "gogeta_requests", "Requests answered, by status class", ["code"], registry=r
        )
        self.domain_requests = Counter(
            "gogeta_domain_requests", "Requests answered, by domain", ["domain"], registry=r
        )
        self.upstream_latency = Histogram(
            "gogeta_upstream_latency_seconds",
            "From sending a request upstream to its response headers",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.open_connections = Gauge(
            "gogeta_open_connections",
            "Client connections open",
            multiprocess_mode="livesum",
            registry=r,
        )
        self.etcd_index = Gauge(
            "gogeta_etcd_index",
            "etcd index the routing table is at",
            multiprocess_mode="liveall",
            registry=r,
        )
        self.etcd_unreachable = Gauge(
            "gogeta_etcd_unreachable",
            "1 while etcd does not answer the resolver",
            multiprocess_mode="liveall",
            registry=r,
        )
        self.tunnels = Counter(
            "gogeta_tunnels", "Upgrade tunnels (WebSocket...) opened", registry=r
        )
        self.open_tunnels = Gauge(
            "gogeta_open_tunnels",
            "Upgrade tunnels open",
            multiprocess_mode="livesum",
            registry=r,
        )
        self._resolver_counters: dict[str, Gauge] = {}
        # The labelled children, looked up once (`labels()` costs a lock and a key build):
        # by status class, and by domain (at most MAX_DOMAINS of them, and the two
        # catch-all labels).
        self._by_class: dict[int, Any] = {}
        self._by_domain: dict[str, Any] = {}
        self._domains = 0  # domains with their own label

    def count_request(self, status: int, domain: str) -> None:
        by_class = self._by_class.get(status // 100)
        if by_class is None:
            by_class = self._by_class[status // 100] = self.requests.labels(f"{status // 100}xx")
        by_class.inc()
        by_domain = self._by_domain.get(domain)
        if by_domain is None:
            if domain not in ("unknown", "other"):
                if self._domains >= MAX_DOMAINS:
                    domain = "other"
                else:
                    self._domains += 1
            by_domain = self._by_domain.get(domain)
            if by_domain is None:
                by_domain = self._by_domain[domain] = self.domain_requests.labels(domain)
        by_domain.inc()

    def observe_upstream(self, seconds: float) -> None:
        self.upstream_latency.observe(seconds)

    def count_connection(self, delta: int) -> None:
        self.open_connections.inc(delta)

    def count_tunnel(self, delta: int) -> None:
        """+1 as an upgrade tunnel opens, -1 as it closes."""
        if delta > 0:
            self.tunnels.inc(delta)
        self.open_tunnels.inc(delta)

    def update_resolver(self, described: dict[str, Any]) -> None:
        """Copy the resolver's sync state and counters (`Resolver.describe()`)."""
        if described.get("etcd_index") is not None:
            self.etcd_index.set(described["etcd_index"])
        self.etcd_unreachable.set(1 if described.get("unreachable_since") else 0)
        for name, value in (described.get("counters") or {}).items():
            gauge = self._resolver_counters.get(name)
            if gauge is None:
                gauge = Gauge(
                    "gogeta_resolver_" + re.sub(r"[^A-Za-z0-9_]", "_", name),
                    f"Resolver counter {name} (since this process started)",
                    multiprocess_mode="liveall",
                    registry=self.registry,
                )
                self._resolver_counters[name] = gauge
            gauge.set(value)

    def render(self) -> tuple[str, bytes]:
        """Content type and body of the Prometheus text exposition."""
        if self.multiprocess:
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
            return CONTENT_TYPE_LATEST, generate_latest(registry)
        return CONTENT_TYPE_LATEST, generate_latest(self.registry)
