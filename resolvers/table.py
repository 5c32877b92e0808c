"""The `IoEtcd` and `Env` resolvers (docs/behaviour.md §5): routing policy over a mirrored table.

Round robin, passive ejection, the wake-up decision and robots.txt, over the tables a
`Source` (resolvers/source.py) keeps live; nothing here knows which etcd API that is. A
request reads the mirrored table and never waits for etcd. The two writes gogeta makes
(`lastAccess`, and `status/expected` to wake a passivated instance) are decided here and
queued to the `Writer` (resolvers/writer.py), so a slow or dead etcd never slows a request.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Collection
from typing import Any

import gevent
import gevent.event

from resolvers.base import DEFAULT_ROBOTS, RoutingError, Status, Upstream
from resolvers.listing import CHUNK, NameIndex, instance_view, page_of, without_credentials
from resolvers.model import Service, next_instance
from resolvers.nodes import PAUSE_EVERY, Pause, no_pause
from resolvers.source import Source, Turns
from resolvers.tree import DomainTree, ServiceTree
from resolvers.writer import Writer

log = logging.getLogger(__name__)

SWEEP_SECONDS = 60.0


class Ejections:
    """Instances whose connection just failed, skipped until a deadline (passive checks).

    Empty (and falsy) in the normal case, so the request path pays nothing for it.
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._until: dict[Upstream, float] = {}
        self.count = 0  # instances ejected since the process started

    def __bool__(self) -> bool:
        return bool(self._until)

    def eject(self, upstream: Upstream) -> None:
        if self.seconds <= 0:
            return
        if upstream not in self._until:
            # INFO: proxy.front logs the upstream's failing state, once, at WARNING.
            log.info("%s failed: preferring other instances for %gs", upstream.label, self.seconds)
            self.count += 1
        self._until[upstream] = time.monotonic() + self.seconds

    def prune(self) -> None:
        """Forget deadlines that passed (an instance that moved is never asked again)."""
        now = time.monotonic()
        for upstream in [u for u, until in self._until.items() if until <= now]:
            del self._until[upstream]

    def until(self, upstream: Upstream) -> float | None:
        """Epoch seconds until which `upstream` is skipped, None when it is not."""
        until = self._until.get(upstream)
        if until is None:
            return None
        left = until - time.monotonic()
        return None if left <= 0 else time.time() + left

    def ejected(self, upstream: Upstream) -> bool:
        until = self._until.get(upstream)
        if until is None:
            return False
        if time.monotonic() >= until:
            del self._until[upstream]
            return False
        return True


class TableResolver:
    """IoEtcd: `/domains` → service or URL. Env (`env=True`): service = first label.

    Fed by `source`, which mirrors `service_dir` (and `domain_dir` unless `env`).
    """

    def __init__(
        self,
        source: Source,
        domain_dir: str,
        service_dir: str,
        last_access_interval: float,
        eject_seconds: float,
        env: bool = False,
        implicit_dirs: bool = False,
    ) -> None:
        self.env = env
        self.name = "Env" if env else "IoEtcd"
        self.source = source
        # implicit_dirs: a source of keys only (etcd v3), see resolvers/tree.py
        self.domains = DomainTree(domain_dir, implicit_dirs)
        self.services = ServiceTree(service_dir, implicit_dirs)
        self.implicit_dirs = implicit_dirs
        self._changed = gevent.event.Event()
        source.mirror(self.services, self._on_change)
        if not env:
            source.mirror(self.domains, self._on_change)
        self.writer = Writer(source, service_dir, last_access_interval)
        self._positions: dict[str, int] = {}  # round robin: the only per-request state
        self.ejections = Ejections(eject_seconds)
        self._sweeper: gevent.Greenlet | None = None
        self._names = NameIndex()  # hostnames (Env: service names) in order, for pages

    def start(self) -> None:
        self.source.start()
        self.writer.start()
        if self._sweeper is None:
            self._sweeper = gevent.spawn(self._sweep_forever)

    def stop(self) -> None:
        self.source.stop()
        self.writer.stop()
        if self._sweeper is not None:
            self._sweeper.kill(block=False)
            self._sweeper = None

    def _sweep_forever(self) -> None:
        while True:
            gevent.sleep(SWEEP_SECONDS)
            self.sweep(Turns())

    def sweep(self, pause: Pause = no_pause) -> None:
        """Drop per-service and per-instance bookkeeping that no longer matches the table.

        Round-robin positions, lastAccess times, wake-up marks and ejections are keyed by
        service or instance; without this they would grow with every service a long-running
        process has ever seen. At 100,000 services that is as many lookups: `pause` is
        called every `PAUSE_EVERY` of them (the running process gives requests their turns). A
        table swapped in meanwhile leaves at worst a stale entry to the next sweep, or
        drops a fresh one (a round robin restarting, a lastAccess written again early).
        """
        services = self.services.services
        for n, name in enumerate(list(self._positions)):
            if n % PAUSE_EVERY == 0:
                pause()
            if name not in services:
                self._positions.pop(name, None)
        self.writer.prune(services, pause)
        self.ejections.prune()

    def ready(self) -> bool:
        return self.source.state().loaded

    def _on_change(self, kind: str, detail: Any) -> None:
        # Wake every request waiting in `wait_for_change`, then arm a fresh event.
        changed, self._changed = self._changed, gevent.event.Event()
        changed.set()
        listed = self.services if self.env else self.domains
        if kind == "load":  # rare: the names are sorted again when next listed
            self._names.invalidate()
        elif isinstance(detail, str) and detail.startswith(listed.prefix + "/"):
            self._names.touched(detail[len(listed.prefix) + 1 :].partition("/")[0].lower())
        elif detail == listed.prefix:
            self._names.invalidate()
        # An instance deleted (or reloaded away) is a new one if it comes back: it must not
        # inherit the wake-up marks of the old one.
        # Without directories (v3) any key's deletion may be the instance's last one.
        prefix = self.services.prefix
        if kind == "load" or (
            isinstance(detail, str)
            and (detail == prefix or detail.startswith(prefix + "/"))
            and (self.implicit_dirs or detail[len(prefix) :].count("/") <= 2)
        ):
            self.writer.forget_wakes(self.services.services)

    def wait_for_change(self, timeout: float) -> bool:
        return bool(self._changed.wait(timeout))

    def _service_for(self, hostname: str) -> tuple[Service | None, Upstream | None, bool]:
        """(service, upstream for a `uri` domain, whether the hostname is a service domain)."""
        if self.env:
            name = hostname.partition(".")[0]
            service = self.services.services.get(name)
            return service, None, service is not None
        domain = self.domains.domains.get(hostname)
        if domain is None:
            return None, None, False
        if domain.upstream is not None:
            return None, domain.upstream, False
        return self.services.services.get(domain.value), None, True

    def resolve(
        self, hostname: str, avoid: Collection[Upstream] = (), wake: bool = True
    ) -> Upstream:
        service, upstream, _ = self._service_for(hostname)
        if upstream is not None:
            return upstream
        if service is None or not service.instances:
            raise RoutingError(Status.NOTFOUND, hostname)
        position, chosen = next_instance(
            service.instances,
            self._positions.get(service.name, -1),
            avoid.__contains__ if avoid else None,
            self.ejections.ejected if self.ejections else None,
        )
        self._positions[service.name] = position
        if chosen is None:
            last = service.instances[position]
            if last.status is Status.PASSIVATED:
                if wake:
                    self.writer.wake(last)
            elif last.status is Status.ERROR and self.writer.recently_woken(last):
                # Beyond the table (docs/behaviour.md §3.3): once we set `expected` to `started`, it
                # reads stopped/started ("error") until its orchestrator moves it
                # to starting. Visitors keep the self-reloading wake-up page meanwhile
                # instead of a dead-end error page.
                raise RoutingError(Status.PASSIVATED, hostname)
            raise RoutingError(last.refusal, hostname)
        self.writer.touch(chosen)
        assert chosen.upstream is not None
        return chosen.upstream

    def failed(self, upstream: Upstream) -> None:
        self.ejections.eject(upstream)

    def routed(self, hostname: str) -> bool:
        # Env routes any name whose first label is a service: no list of domains to trust.
        return not self.env and hostname in self.domains.domains

    def robots(self, hostname: str) -> str | None:
        service, _, is_service_domain = self._service_for(hostname)
        if not is_service_domain:
            return None
        robots = service.robots if service is not None else None
        return robots if robots is not None else DEFAULT_ROBOTS

    def stats(self) -> dict[str, Any]:
        state = self.source.state()
        return {
            "resolver": self.name,
            "source": self.source.name,
            "loaded": state.loaded,
            "etcd_index": state.index,
            "unreachable_since": state.unreachable_since,
            "last_error": state.last_error,
            "etcd_problem": state.problem,
            "counters": {
                "events_applied": state.events_applied,
                "reloads": state.reloads,
                "wakeups": self.writer.wakeups,
                "last_access_writes": self.writer.last_access_writes,
                "writes_dropped": self.writer.dropped,
                "ejections": self.ejections.count,
            },
            "gauges": {"watch_lag_events": state.lag, "writes_waiting": len(self.writer.waiting)},
            "endpoint": without_credentials(state.endpoint),
            "last_reload": None
            if state.last_load is None
            else {"at": state.last_load, "reason": state.last_load_reason},
        }

    def describe(
        self, query: str | None = None, page: int | None = None, per_page: int = 200
    ) -> dict[str, Any]:
        """`stats()` and the table: every domain and service, or with `query` or `page` one
        page of the domains (hostnames containing `query`, in order) and their services."""
        services = self.services.services
        pause = _yield
        if query is None and page is None:
            # The whole table: built from a copy a chunk at a time, pausing in between.
            described_domains = {}
            for n, (host, d) in enumerate(list(self.domains.domains.items()), 1):
                described_domains[host] = {"type": d.type, "value": d.value}
                if n % CHUNK == 0:
                    pause()
            described_services = {}
            for n, each in enumerate(list(services.values()), 1):
                described_services[each.name] = self._instances(each)
                if n % (CHUNK // 10) == 0:
                    pause()
            return {
                **self.stats(),
                "domains": described_domains,
                "services": described_services,
            }
        listed: dict[str, Any] = services if self.env else self.domains.domains
        chosen = page_of(
            self._names.ordered(listed, pause), query or "", page or 1, per_page, pause
        )
        shown: dict[str, Any] = {}
        used: dict[str, Any] = {}
        for name in chosen.names:
            if self.env:  # the service is the hostname's first label (docs/behaviour.md §5.2)
                shown[f"{name}.*"] = {"type": "service", "value": name}
                service = services.get(name)
            else:
                domain = listed.get(name)
                if domain is None:
                    continue
                shown[name] = {"type": domain.type, "value": domain.value}
                service = services.get(domain.value) if domain.type == "service" else None
            if service is not None and service.name not in used:
                used[service.name] = self._instances(service)
        return {**self.stats(), "domains": shown, "services": used, "page": chosen.summary()}

    def _instances(self, service: Service) -> list[dict[str, Any]]:
        ejections = self.ejections
        return [
            instance_view(
                i,
                self.services.raw_of(service.name, i.index),
                ejections.until(i.upstream) if ejections and i.upstream is not None else None,
            )
            for i in service.instances
        ]


def _yield() -> None:
    gevent.sleep(0)  # let requests run between two chunks of a long listing
