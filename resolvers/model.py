"""The routing model: domains, services, instances, computed status, round robin.

Pure: built from plain strings as they are stored in etcd, no I/O, no etcd client. Values
are immutable; the watcher builds new ones and swaps them in. Everything that can be
invalid in etcd is parsed here and raises ValueError with a reason a log line can carry.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from resolvers.base import Status, Upstream

DOMAIN_TYPES = ("service", "uri")


def upstream_of_url(url: str) -> Upstream:
    """The upstream for an absolute http(s) URL; raises ValueError when it is not one."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an absolute http(s) URL: {url!r}")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return Upstream(
        scheme=parts.scheme,
        host=parts.hostname,
        port=port,
        path=parts.path.rstrip("/"),
        query=parts.query,
    )


@dataclass(frozen=True, slots=True)
class Location:
    host: str
    port: int


MAX_JSON_BYTES = 64 * 1024
MAX_JSON_BRACKETS = 64


def _small_json(text: str, what: str) -> object:
    """Decode a small JSON value from etcd, refusing huge or deeply nested ones.

    Deep nesting would make the decoder hit the recursion limit; on CPython 3.11 that can
    leave the interpreter's recursion accounting off for later `compile` calls, so such
    values are refused before decoding.
    """
    if len(text) > MAX_JSON_BYTES:
        raise ValueError(f"{what} is larger than {MAX_JSON_BYTES} bytes")
    if text.count("[") + text.count("{") > MAX_JSON_BRACKETS:
        raise ValueError(f"{what} is too deeply nested")
    try:
        return json.loads(text)
    except ValueError:
        raise ValueError(f"{what} is not JSON") from None


def parse_location(text: str) -> Location:
    """`{"host": "172.17.0.5", "port": 42567}` → Location (docs/behaviour.md §1)."""
    data = _small_json(text, "location")
    if not isinstance(data, dict):
        raise ValueError("location is not a JSON object")
    host, port = data.get("host"), data.get("port")
    if not isinstance(host, str) or not host.strip():
        raise ValueError("location has no host")
    if isinstance(port, float) and port.is_integer() and math.isfinite(port):
        port = int(port)
    if isinstance(port, bool) or not isinstance(port, int):
        raise ValueError("location port is not a number")
    if not 0 < port < 65536:
        raise ValueError("location port is out of range")
    host = host.strip()
    if any(c in host for c in "/ ?#@") or len(host) > 253:
        raise ValueError("location host is not a host name or address")
    return Location(host, port)


def parse_robots(text: str) -> str | None:
    """The `robots` text of `config/gogeta` (docs/behaviour.md §1), None when it has none."""
    data = _small_json(text, "config/gogeta")
    if not isinstance(data, dict):
        raise ValueError("config/gogeta is not a JSON object")
    robots = data.get("robots")
    if robots is None:
        return None
    if not isinstance(robots, str):
        raise ValueError("config/gogeta robots is not a string")
    return robots


def computed_status(
    has_status: bool, current: str | None, expected: str | None, alive: str | None
) -> Status:
    """docs/behaviour.md §3.1, row by row."""
    if not has_status:
        return Status.STARTED
    if current == "stopped":
        if expected == "passivated":
            return Status.PASSIVATED
        return Status.STOPPED if expected == "stopped" else Status.ERROR
    if current == "starting":
        return Status.STARTING if expected == "started" else Status.ERROR
    if current == "started":
        return Status.STARTED if expected == "started" and alive else Status.ERROR
    if current == "stopping":
        return Status.STOPPED if expected == "stopped" else Status.ERROR
    return Status.ERROR


@dataclass(frozen=True, slots=True)
class Instance:
    """One instance of a service. `upstream` is set only when it can take traffic."""

    service: str
    index: str
    status: Status
    location: Location | None
    robots: str | None
    upstream: Upstream | None

    @property
    def refusal(self) -> Status:
        """The status to answer when round robin ends on this instance (docs/behaviour.md §3.2).

        A started instance without a usable location cannot serve: that is an error.
        """
        return Status.ERROR if self.status is Status.STARTED else self.status


def make_instance(
    service: str,
    index: str,
    location: Location | None,
    has_status: bool,
    current: str | None,
    expected: str | None,
    alive: str | None,
    robots: str | None,
) -> Instance:
    status = computed_status(has_status, current, expected, alive)
    upstream = None
    if status is Status.STARTED and location is not None:
        upstream = Upstream("http", location.host, location.port, service=service, instance=index)
    return Instance(service, index, status, location, robots, upstream)


def index_order(index: str) -> tuple[int, int, str]:
    """Stable instance order: numeric indexes by value (2 before 10), then the others."""
    return (0, int(index), "") if index.isdigit() and len(index) < 19 else (1, 0, index)


@dataclass(frozen=True, slots=True)
class Service:
    name: str
    instances: tuple[Instance, ...]

    @property
    def robots(self) -> str | None:
        """The first instance's robots text, in instance order (docs/behaviour.md §2.4)."""
        for instance in self.instances:
            if instance.robots is not None:
                return instance.robots
        return None


def make_service(name: str, instances: Sequence[Instance]) -> Service:
    return Service(name, tuple(sorted(instances, key=lambda i: index_order(i.index))))


def next_instance(
    instances: Sequence[Instance],
    previous: int,
    avoid: Callable[[Upstream], bool] | None = None,
    spare: Callable[[Upstream], bool] | None = None,
) -> tuple[int, Instance | None]:
    """docs/behaviour.md §4.1: from one past `previous`, the first that can serve, each once.

    Returns (position looked at last, chosen instance or None). When none can serve, the
    instance at that position is the "last instance looked at" whose status answers.
    `avoid(upstream)` excludes an instance outright (already tried for this request);
    `spare(upstream)` only defers it (recently failed): a spared instance is chosen only
    when no other can serve, rather than failing at once.
    """
    count = len(instances)
    position = previous
    fallback: tuple[int, Instance] | None = None
    for _ in range(count):
        position = (position + 1) % count
        upstream = instances[position].upstream
        if upstream is None or (avoid is not None and avoid(upstream)):
            continue
        if spare is not None and spare(upstream):
            if fallback is None:
                fallback = (position, instances[position])
            continue
        return position, instances[position]
    if fallback is not None:
        return fallback
    return position, None


@dataclass(frozen=True, slots=True)
class Domain:
    """`/domains/{host}`: a service name (type `service`) or an upstream (type `uri`)."""

    type: str
    value: str
    upstream: Upstream | None  # for type `uri`


def make_domain(type_: str, value: str) -> Domain:
    type_ = type_.strip()
    value = value.strip()
    if type_ not in DOMAIN_TYPES:
        raise ValueError(f"unknown domain type {type_[:40]!r}")
    if not value:
        raise ValueError("empty domain value")
    if type_ == "uri":
        return Domain(type_, value, upstream_of_url(value))
    if "/" in value:
        raise ValueError("service name contains '/'")
    return Domain(type_, value, None)
