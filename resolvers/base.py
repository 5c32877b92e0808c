"""What every resolver promises the request path, and nothing about WSGI or HTTP.

A resolver turns a hostname into an `Upstream` (where to forward) or raises `RoutingError`
carrying the `Status` that explains why not. The request path turns that status into a page
and an HTTP code; resolvers never see a request.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any, Protocol

from errors import GogetaError


class Status(enum.Enum):
    """Computed status of a route (docs/behaviour.md §3.1), plus `NOTFOUND` for an unknown host."""

    STARTED = "started"
    STARTING = "starting"
    PASSIVATED = "passivated"
    STOPPED = "stopped"
    ERROR = "error"
    NOTFOUND = "notfound"


DEFAULT_ROBOTS = "User-agent: *\nDisallow: /\n"


@dataclass(frozen=True, slots=True)
class Upstream:
    """A place to forward a request to.

    `path` is joined to the request path with exactly one `/` and `query` is put before the
    request's query (docs/behaviour.md §2.4, type `uri`); both are empty for service instances.
    """

    scheme: str
    host: str
    port: int
    path: str = ""
    query: str = ""
    service: str = ""
    instance: str = ""

    @property
    def label(self) -> str:
        """`service/instance` for logs, or `host:port` for a plain URL."""
        if self.service:
            return f"{self.service}/{self.instance}"
        return f"{self.host}:{self.port}"


# docs/behaviour.md §3.2: status → HTTP code; every other status (stopped, error) a 500.
STATUS_CODES: dict[Status, int] = {
    Status.NOTFOUND: 404,
    Status.STARTING: 503,
    Status.PASSIVATED: 503,
}


class RoutingError(GogetaError):
    """No upstream for this hostname; `status` says which page, and so which code."""

    log_level = logging.DEBUG  # an answer like any other: the access log has it

    def __init__(self, status: Status, hostname: str = "") -> None:
        super().__init__(f"{hostname or 'request'}: {status.value}")
        self.status = status
        self.hostname = hostname
        self.page = status.value
        self.code = STATUS_CODES.get(status, 500)


class Resolver(Protocol):
    """The interface the request path uses; implementations live beside this module."""

    def start(self) -> None:
        """Begin background work (watching etcd...). Called once the event loop runs."""

    def stop(self) -> None:
        """End background work."""

    def resolve(
        self, hostname: str, avoid: Collection[Upstream] = (), wake: bool = True
    ) -> Upstream:
        """The upstream for this hostname, or raise RoutingError.

        `avoid`: upstreams this request already tried; another is chosen when one can serve.
        `wake`: a passivated application may be asked to start; when False it is left
        asleep and the RoutingError is the same.
        """
        ...

    def failed(self, upstream: Upstream) -> None:
        """A connection to `upstream` failed: prefer the others for a short while."""

    def wait_for_change(self, timeout: float) -> bool:
        """Block this greenlet until the routing table changes (True) or `timeout` (False)."""
        ...

    def robots(self, hostname: str) -> str | None:
        """The robots.txt text if hostname is a service domain, else None (docs/behaviour.md §2.4).

        Never wakes anything up: a crawler must not start a sleeping application.
        """
        ...

    def ready(self) -> bool:
        """True once the routing table has been loaded at least once."""
        ...

    def routed(self, hostname: str) -> bool:
        """Whether `hostname` is a domain of the table (under -domainDir): what certificates
        may be ordered for, never a name a client merely sent."""
        ...

    def stats(self) -> dict[str, Any]:
        """The sync state and figures, JSON-ready and cheap (no table), for health and metrics.

        Keys: `resolver` (name), `loaded` (bool), `etcd_index` (int or None),
        `unreachable_since` (epoch seconds since etcd stopped answering, or None),
        `last_error` (str or None), `counters` (name → number that only grows since the
        process started: `events_applied`, `reloads`, `wakeups`...), `gauges` (name →
        number that goes up and down: `watch_lag_events`). Optional: `source` (its name),
        `endpoint` (the etcd endpoint in use), `last_reload` (`at`, epoch seconds, and
        `reason`, or None).
        """
        ...

    def describe(
        self, query: str | None = None, page: int | None = None, per_page: int = 200
    ) -> dict[str, Any]:
        """`stats()` plus `domains` and `services` (the live routing table), for `routes`.

        With `query` or `page`: one page of the domains whose hostname contains `query`,
        in hostname order, the services they name, and `page` (`query`, `number`,
        `per_page`, `total`, `pages`); only that page is built.
        """
        ...
