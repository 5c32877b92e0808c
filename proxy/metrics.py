"""Prometheus metrics, kept by prometheus-client, written out by proxy/exposition.py.

Requests by status code, by domain, service and instance (with the status class), upstream
latency, failures by kind, retries, bytes, open connections; the resolver's figures and
the standard `process_*` ones, read when scraped. Every label value is bounded, so that
clients inventing Host headers or a churning etcd cannot grow the series without end:
a code outside 100–599 is `other`; a domain has its own label only when the resolver knew
it and for the first `MAX_DOMAINS` a process sees (an unknown hostname is `unknown`,
later ones `other`); likewise the first `MAX_SERVICES` services and `MAX_UPSTREAMS`
upstreams, then `other`. An upstream is labelled as in the access log (`service/index`,
or `host:port` for a URL): Prometheus keeps `instance` for the scraped target.

Under gunicorn, metrics cover every worker: with `PROMETHEUS_MULTIPROC_DIR` set (by
`gunicorn.conf.py`) each process writes its values to files there and a scrape, answered
by any worker, merges them. Custom collectors are not read in that mode, so each worker
copies its resolver and process figures into those files (`publish`): counters summed
over the workers, gauges one per worker (label `pid`).
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    Summary,
    disable_created_metrics,
    multiprocess,
)
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from proxy import values
from proxy.exposition import Page, Registry, exposition
from resolvers.base import Upstream

MAX_DOMAINS = 200
MAX_SERVICES = 200
MAX_UPSTREAMS = 400
MAX_CERTIFICATES = 200  # hostnames with an expiry series: the soonest to expire
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
FAILURE_KINDS = ("connect_refused", "connect_timeout", "timeout", "reset", "bad_answer")
# The `class` label by `status // 100`; index 0 for any code outside 100–599.
CLASSES = ("other", "1xx", "2xx", "3xx", "4xx", "5xx")

T = TypeVar("T")
Stats = Callable[[], dict[str, Any]]
# ((hostname, notAfter epoch seconds) soonest first, {state: certificates}) (transport.tls)
CertificateFigures = Callable[[], tuple[Sequence[tuple[str, float]], Mapping[str, int]]]


def class_index(status: int) -> int:
    return status // 100 if 100 <= status <= 599 else 0


class ResolverCollector(Collector):
    """The resolver's figures (`Resolver.stats()`), read at scrape time."""

    def __init__(self, stats: Stats) -> None:
        self.stats = stats

    def collect(self) -> Iterable[Metric]:
        stats = self.stats()
        if stats.get("etcd_index") is not None:
            yield GaugeMetricFamily(
                "gogeta_etcd_index", "etcd index the routing table is at", stats["etcd_index"]
            )
        yield GaugeMetricFamily(
            "gogeta_etcd_unreachable",
            "1 while etcd does not answer the resolver",
            1 if stats.get("unreachable_since") else 0,
        )
        yield GaugeMetricFamily(
            "gogeta_resolver_loaded", "1 once the routing table is loaded", int(stats["loaded"])
        )
        for name, number in (stats.get("counters") or {}).items():
            yield CounterMetricFamily(
                f"gogeta_resolver_{name}", f"Resolver: {name.replace('_', ' ')}", number
            )
        for name, number in (stats.get("gauges") or {}).items():
            yield GaugeMetricFamily(
                f"gogeta_resolver_{name}", f"Resolver: {name.replace('_', ' ')}", number
            )


class CertificateCollector(Collector):
    """The certificates served, read at scrape time: seconds each has left, by state.

    Every gunicorn worker holds the same certificates, so the worker answering a scrape
    speaks for all (and a deleted certificate leaves at once, which the shared files of
    prometheus-client's multiprocess mode cannot do).
    """

    def __init__(self, figures: CertificateFigures) -> None:
        self.figures = figures

    def collect(self) -> Iterable[Metric]:
        expiries, states = self.figures()
        now = time.time()
        left = GaugeMetricFamily(
            "gogeta_certificate_expiry_seconds",
            f"Seconds until the certificate expires (the {MAX_CERTIFICATES} soonest)",
            labels=["hostname"],
        )
        for hostname, not_after in expiries[:MAX_CERTIFICATES]:
            left.add_metric([hostname], round(not_after - now))
        yield left
        counts = GaugeMetricFamily(
            "gogeta_certificates",
            "Certificates by state: ok, expiring (within 14 days), expired, skipped",
            labels=["state"],
        )
        for state in ("ok", "expiring", "expired", "skipped"):
            counts.add_metric([state], states.get(state, 0))
        yield counts


def _bounded(seen: set[T], label: T, limit: int, overflow: T) -> T:
    """`label` while it is one of the first `limit` labels `seen` gets, else `overflow`."""
    if label not in seen:
        if len(seen) >= limit:
            return overflow
        seen.add(label)
    return label


class _ByClass:
    """The children of one labelled family by status class, each looked up on first use
    (`labels()` takes a lock and builds a key): `labels` then the class."""

    __slots__ = ("children", "family", "labels")

    def __init__(self, family: Counter, *labels: str) -> None:
        self.family = family
        self.labels = labels
        self.children: list[Any] = [None] * len(CLASSES)

    def inc(self, cls: int) -> None:
        child = self.children[cls]
        if child is None:
            child = self.children[cls] = self.family.labels(*self.labels, CLASSES[cls])
        child.inc()


class _Upstream:
    """One upstream's labelled children, looked up once: requests by class (per service
    and per upstream), latency, failures by kind, retries."""

    __slots__ = (
        "failures",
        "retries",
        "service",
        "service_latency",
        "upstream",
        "upstream_labels",
        "upstream_latency",
    )

    def __init__(self, metrics: Metrics, service: str, upstream: tuple[str, str]) -> None:
        self.upstream_labels = upstream
        self.service = _ByClass(metrics.service_requests, service)
        self.upstream = _ByClass(metrics.upstream_requests, *upstream)
        self.service_latency = metrics.service_latency.labels(service)
        self.upstream_latency = metrics.upstream_latency.labels(*upstream)
        self.failures: dict[str, Any] = {}  # by kind, made on first use
        self.retries = metrics.retries.labels(service)


class Metrics:
    def __init__(
        self, stats: Stats | None = None, certificates: CertificateFigures | None = None
    ) -> None:
        disable_created_metrics()  # type: ignore[no-untyped-call]  # `*_created`: noise
        values.install()  # standalone: a float per value, no lock (proxy/values.py)
        # Under gunicorn: the library's values are in files (it read PROMETHEUS_MULTIPROC_DIR
        # when first imported), and this page reads them back from there.
        self.multiprocess = values.in_files()
        self.registry = r = Registry()
        self.requests = Counter(
            "gogeta_requests", "Requests answered, by status code", ["code"], registry=r
        )
        self.domain_requests = Counter(
            "gogeta_domain_requests",
            "Requests answered, by domain and status class",
            ["domain", "class"],
            registry=r,
        )
        self.service_requests = Counter(
            "gogeta_service_requests",
            "Requests sent to a service, by the status class of the answer",
            ["service", "class"],
            registry=r,
        )
        self.upstream_requests = Counter(
            "gogeta_upstream_requests",
            "Requests sent to an upstream (instance or URL), by the status class of the answer",
            ["service", "upstream", "class"],
            registry=r,
        )
        self.service_latency = Histogram(
            "gogeta_service_latency_seconds",
            "From sending a request to a service to its response headers",
            ["service"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        # By instance only a count and a sum (its mean): buckets for 400 upstreams would be
        # 7,200 samples, half the page, for percentiles the service's histogram gives.
        self.upstream_latency = Summary(
            "gogeta_upstream_latency_seconds",
            "From sending a request upstream to its response headers",
            ["service", "upstream"],
            registry=r,
        )
        self.failures = Counter(
            "gogeta_upstream_failures",
            "Failed exchanges with an upstream, by kind",
            ["service", "upstream", "kind"],
            registry=r,
        )
        self.retries = Counter(
            "gogeta_retries",
            "Requests replayed on another instance after a failure",
            ["service"],
            registry=r,
        )
        self.received = Counter(
            "gogeta_received_bytes", "Request body bytes read from clients", registry=r
        )
        self.sent = Counter("gogeta_sent_bytes", "Response body bytes sent to clients", registry=r)
        self.open_connections = Gauge(
            "gogeta_open_connections",
            "Client connections open",
            multiprocess_mode="livesum",
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
        # Figures read when scraped: registered in the registry when standalone; under
        # gunicorn copied into the shared files by `publish`.
        self._local: list[Collector] = [ProcessCollector(registry=None)]
        if stats is not None:
            self._local.insert(0, ResolverCollector(stats))
        if not self.multiprocess:
            for collector in self._local:
                r.register(collector)
        self._alike = None if certificates is None else CertificateCollector(certificates)
        if self._alike is not None and not self.multiprocess:
            r.register(self._alike)
        self._page: Page | None = None  # made at the first scrape, once all is registered
        self._published: dict[str, Any] = {}  # family name → Gauge or Counter
        self._counted: dict[str, float] = {}  # counter name → value already added

        # The labelled children, looked up once per label value and bounded.
        self._by_code: dict[int, Any] = {}
        self._by_domain: dict[str, _ByClass] = {}
        self._domains: set[str] = set()  # domains with their own label
        self._by_upstream: dict[Upstream, _Upstream] = {}  # a cache of `_series`
        self._series: dict[tuple[str, tuple[str, str]], _Upstream] = {}  # bounded labels
        self._services: set[str] = set()  # services with their own label
        self._upstreams: set[tuple[str, str]] = set()

    def count_request(self, status: int, domain: str, received: int = 0, sent: int = 0) -> None:
        cls = class_index(status)
        code = status if cls else 0
        by_code = self._by_code.get(code)
        if by_code is None:
            by_code = self._by_code[code] = self.requests.labels(str(code) if cls else "other")
        by_code.inc()
        by_domain = self._by_domain.get(domain)
        if by_domain is None:
            if domain not in ("unknown", "other"):
                domain = _bounded(self._domains, domain, MAX_DOMAINS, "other")
            by_domain = self._by_domain.get(domain)
            if by_domain is None:
                by_domain = self._by_domain[domain] = _ByClass(self.domain_requests, domain)
        by_domain.inc(cls)
        if received:
            self.received.inc(received)
        if sent:
            self.sent.inc(sent)

    def _upstream(self, upstream: Upstream) -> _Upstream:
        found = self._by_upstream.get(upstream)
        if found is None:
            service = upstream.service or "-"  # a `uri` domain's URL has no service
            labels = (service, upstream.label)
            service = _bounded(self._services, service, MAX_SERVICES, "other")
            labels = _bounded(self._upstreams, labels, MAX_UPSTREAMS, ("other", "other"))
            # One set of children per label pair, however many upstreams share it: made
            # anew per upstream they would be thousands of long-lived objects at 100,000
            # instances, for the cyclic collector to walk again and again.
            found = self._series.get((service, labels))
            if found is None:
                found = self._series[service, labels] = _Upstream(self, service, labels)
            if len(self._by_upstream) >= 4096:  # upstreams come and go (moved instances)
                self._by_upstream.clear()
            self._by_upstream[upstream] = found
        return found

    def count_upstream(self, upstream: Upstream, status: int, seconds: float | None = None) -> None:
        """A request answered after being sent to `upstream` (the last one it was sent to)."""
        series = self._upstream(upstream)
        cls = class_index(status)
        series.service.inc(cls)
        series.upstream.inc(cls)
        if seconds is not None:
            series.service_latency.observe(seconds)
            series.upstream_latency.observe(seconds)

    def count_failure(self, upstream: Upstream, kind: str) -> None:
        """A failed exchange with `upstream`; `kind` is one of FAILURE_KINDS."""
        series = self._upstream(upstream)
        child = series.failures.get(kind)
        if child is None:
            child = series.failures[kind] = self.failures.labels(*series.upstream_labels, kind)
        child.inc()

    def count_retry(self, upstream: Upstream) -> None:
        """A request replayed on `upstream` after another instance failed."""
        self._upstream(upstream).retries.inc()

    def count_connection(self, delta: int) -> None:
        self.open_connections.inc(delta)

    def count_tunnel(self, delta: int) -> None:
        """+1 as an upgrade tunnel opens, -1 as it closes."""
        if delta > 0:
            self.tunnels.inc(delta)
        self.open_tunnels.inc(delta)

    def publish(self, process: bool = True) -> None:
        """Under gunicorn, copy this worker's resolver (and process) figures to the files.

        Gauges are per worker (`liveall`: the scrape adds a `pid` label and forgets a dead
        worker's); counters grow by what this worker counted since it last published, so
        their sum over the workers, dead ones included, only grows.
        """
        if not self.multiprocess:
            return
        for collector in self._local if process else self._local[:1]:
            for family in collector.collect():
                for sample in family.samples:
                    self._publish(family, sample.value)

    def _publish(self, family: Metric, number: float) -> None:
        metric = self._published.get(family.name)
        if family.type == "counter":
            if metric is None:
                metric = self._published[family.name] = Counter(
                    family.name, family.documentation, registry=None
                )
            added = number - self._counted.get(family.name, 0.0)
            if added > 0:
                metric.inc(added)
                self._counted[family.name] = number
            return
        if metric is None:
            metric = self._published[family.name] = Gauge(
                family.name, family.documentation, multiprocess_mode="liveall", registry=None
            )
        metric.set(number)

    def families(self) -> Iterable[Metric]:
        """Every family of the page, each collected when it is reached."""
        if not self.multiprocess:
            return self.registry.collect()
        self.publish()  # this worker's figures as of now
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        if self._alike is not None:
            registry.register(self._alike)
        return registry.collect()

    def pieces(self) -> tuple[str, Iterator[bytes]]:
        """Content type and body of the Prometheus text exposition, a family at a time."""
        if self.multiprocess:
            return CONTENT_TYPE_LATEST, exposition(self.families())
        if self._page is None:
            self._page = Page(self.registry.order)
        return CONTENT_TYPE_LATEST, _frozen_after(self._page)

    def render(self) -> tuple[str, bytes]:
        """Content type and body of the Prometheus text exposition, whole."""
        content_type, pieces = self.pieces()
        return content_type, b"".join(pieces)


def _frozen_after(page: Page) -> Iterator[bytes]:
    """The page's pieces; then, if it showed children it had not shown before, everything
    alive is moved out of the cyclic collector's sight (`gc.freeze`, as after a load).

    The labelled families' children and their values are bounded, never removed, and live
    as long as the process: ~10,000 objects at the bounds, most of what a full collection
    walks under steady traffic (3–9 ms each on a busy machine), though they are never
    garbage. What else is alive at that moment (requests in flight) is frozen with them:
    freed as usual once unreferenced, never collected if it ends in a reference cycle.
    Once the bounds are filled no scrape shows a new child, and nothing more is frozen.
    """
    shown = page.children()
    yield from page.pieces()
    if page.children() > shown:
        gc.freeze()
