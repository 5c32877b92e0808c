"""Mirrors of the etcd trees under `domainDir` and `serviceDir`, kept as routing values.

Pure: fed with `Node`s (key, value, dir) by the watcher, no I/O. `load` builds a whole new
table and swaps it in with one assignment; `apply` changes only the domain or the
instance an event names (O(instances of that service), never O(table)).

etcd v2 has directories, sent as nodes and events of their own. etcd v3 has only keys:
with `implicit_dirs`, a domain, service or instance exists while a key under it does and is
gone with its last key (a status directory likewise), as a v2 directory deleted would be.

Requests read `domains` / `services` without locks. That is safe because greenlets only
switch at blocking calls and nothing here blocks: each update is a single assignment of
an immutable value (a `Domain`, a `Service`) or of a whole new dict. A load calls its
`pause` every few dozen keys, where the watcher lets requests run (at 100,000 domains a
load is seconds of work): they go on reading the old table, swapped only at the end. The
old table is then freed a few dozen entries at a time, with the same pauses: freed at once,
it held the loop tens of milliseconds. A dict of it someone still holds (a listing or a
sweep paused half way through) is left whole, and goes when they drop it.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from resolvers.model import (
    Domain,
    Instance,
    Location,
    Service,
    make_domain,
    make_instance,
    make_service,
    parse_location,
    parse_robots,
)
from resolvers.nodes import DELETE_ACTIONS, PAUSE_EVERY, Node, Pause, Reporter, no_pause


def _parts(prefix: str, key: str) -> list[str] | None:
    """Path of `key` under `prefix` as a list (`[]` for the prefix itself), else None."""
    if key == prefix or key == prefix + "/":
        return []
    if not key.startswith(prefix + "/"):
        return None
    return key[len(prefix) + 1 :].rstrip("/").split("/")


def _free(retired: list[dict[Any, Any]], pause: Pause) -> None:
    """Empty each replaced dict `PAUSE_EVERY` entries at a time, `pause` between, unless
    someone else still holds it: emptying it would change what they read."""
    while retired:
        old = retired.pop()
        # Held by `old` and by getrefcount's own argument, and by nothing else: no one can
        # reach it any more (the tree holds the new one), so no one can while it empties.
        if sys.getrefcount(old) > 2:
            continue
        popitem = old.popitem
        while old:
            for _ in range(min(PAUSE_EVERY, len(old))):
                popitem()
            pause()


def _event(prefix: str, node: Node, action: str) -> tuple[list[str], bool] | None:
    """An event's path under `prefix` (`[]`: the directory itself) and whether it deletes;
    None when the key is not under `prefix`."""
    parts = _parts(prefix, node.key)
    return None if parts is None else (parts, action in DELETE_ACTIONS)


class DomainTree:
    """`/domains/{host}/type|value` → `domains[host]`."""

    def __init__(self, prefix: str, implicit_dirs: bool = False) -> None:
        self.prefix = prefix
        self.implicit_dirs = implicit_dirs
        self.domains: dict[str, Domain] = {}
        self._raw: dict[str, dict[str, str]] = {}
        self._report = Reporter()

    def load(self, nodes: Iterable[Node], pause: Pause = no_pause) -> None:
        raw: dict[str, dict[str, str]] = {}
        for n, node in enumerate(nodes):
            if n % PAUSE_EVERY == 0:
                pause()
            parts = _parts(self.prefix, node.key)
            if not parts:
                continue
            host = parts[0].lower()
            if not host:
                continue
            if len(parts) == 1 and not node.dir:  # logged at load as by `apply`
                self._report.invalid(node.key, node.value, "a domain must be a directory")
            fields = raw.setdefault(host, {})
            if len(parts) == 2 and not node.dir and node.value is not None:
                fields[parts[1]] = node.value
        domains = {}
        for n, (host, fields) in enumerate(raw.items()):
            if n % PAUSE_EVERY == 0:
                pause()
            domain = self._domain_of(host, fields)
            if domain is not None:
                domains[host] = domain
        retired: list[dict[Any, Any]] = [self._raw, self.domains]
        self._raw, self.domains = raw, domains
        _free(retired, pause)

    def apply(self, node: Node, action: str) -> bool:
        """Apply one event; True when it changed routing."""
        event = _event(self.prefix, node, action)
        if event is None:
            return False
        parts, deleted = event
        if not parts:  # the whole directory: only its deletion changes anything
            if deleted:
                self._raw, self.domains = {}, {}
            return deleted
        host = parts[0].lower()
        if not host:
            return False
        if len(parts) == 1:
            if deleted:
                self._raw.pop(host, None)
                return self.domains.pop(host, None) is not None
            if not node.dir:
                self._report.invalid(node.key, node.value, "a domain must be a directory")
            self._raw.setdefault(host, {})
            return False
        if len(parts) != 2:
            return False
        fields = self._raw.setdefault(host, {})
        if deleted:
            fields.pop(parts[1], None)
            if self.implicit_dirs and not fields:
                del self._raw[host]  # its last key: the domain is gone
        elif node.value is not None:
            fields[parts[1]] = node.value
        if parts[1] not in ("type", "value"):
            return False
        domain = self._domain_of(host, fields)
        if domain is None:
            return self.domains.pop(host, None) is not None
        self.domains[host] = domain
        return True

    def _domain_of(self, host: str, fields: dict[str, str]) -> Domain | None:
        type_, value = fields.get("type"), fields.get("value")
        if type_ is None or value is None:
            return None  # docs/behaviour.md §1: routable once both exist
        try:
            return make_domain(type_, value)
        except ValueError as exc:
            self._report.invalid(f"{self.prefix}/{host}", f"{type_} {value}", str(exc))
            return None


@dataclass(slots=True)
class _RawInstance:
    location: Location | None = None
    status_dir: bool = False
    current: str | None = None
    expected: str | None = None
    alive: str | None = None
    robots: str | None = None
    # Not routing: kept for /__gogeta/routes (why an instance is not routable, its lastAccess).
    location_error: str | None = None
    last_access: str | None = None


@dataclass(slots=True)
class _RawService:
    raw: dict[str, _RawInstance] = field(default_factory=dict)
    built: dict[str, Instance] = field(default_factory=dict)


STATUS_FIELDS = ("current", "expected", "alive")


class ServiceTree:
    """`/services/{name}/{index}/...` → `services[name]` (docs/behaviour.md §1, §3.1)."""

    def __init__(self, prefix: str, implicit_dirs: bool = False) -> None:
        self.prefix = prefix
        self.implicit_dirs = implicit_dirs
        self.services: dict[str, Service] = {}
        self._raw: dict[str, _RawService] = {}
        # implicit_dirs: (service, index) → the instance's keys, relative ("status/current")
        self._keys: dict[tuple[str, str], set[str]] = {}
        self._report = Reporter()

    def load(self, nodes: Iterable[Node], pause: Pause = no_pause) -> None:
        raw: dict[str, _RawService] = {}
        keys: dict[tuple[str, str], set[str]] = {}
        for n, node in enumerate(nodes):
            if n % PAUSE_EVERY == 0:
                pause()
            parts = _parts(self.prefix, node.key)
            if not parts or not parts[0]:
                continue
            if len(parts) == 1 and not node.dir:  # as by `apply`: logged, no service
                self._report.invalid(node.key, node.value, "a service must be a directory")
                continue
            service = raw.setdefault(parts[0], _RawService())
            if len(parts) >= 2:
                self._set(service, parts, node, deleted=False)
                if self.implicit_dirs and len(parts) >= 3 and parts[1] in service.raw:
                    keys.setdefault((parts[0], parts[1]), set()).add("/".join(parts[2:]))
        retired: list[dict[Any, Any]] = []
        if self.implicit_dirs:
            for (name, index), held in keys.items():
                raw[name].raw[index].status_dir = any(k.startswith("status/") for k in held)
            retired.append(self._keys)
            self._keys = keys
        services = {}
        for n, (name, service) in enumerate(raw.items()):
            if n % PAUSE_EVERY == 0:
                pause()
            service.built = {
                index: self._build(name, index, inst) for index, inst in service.raw.items()
            }
            services[name] = make_service(name, list(service.built.values()))
        retired += [self._raw, self.services]
        self._raw, self.services = raw, services
        _free(retired, pause)

    def apply(self, node: Node, action: str) -> bool:
        """Apply one event; True when it changed routing."""
        event = _event(self.prefix, node, action)
        if event is None:
            return False
        parts, deleted = event
        if not parts:  # the whole directory: only its deletion changes anything
            if deleted:
                self._raw, self.services = {}, {}
            return deleted
        name = parts[0]
        if not name:
            return False
        if len(parts) == 1:
            if deleted:
                self._raw.pop(name, None)
                return self.services.pop(name, None) is not None
            if not node.dir:
                self._report.invalid(node.key, node.value, "a service must be a directory")
                return False
            if name not in self._raw:
                self._raw[name] = _RawService()
                self.services[name] = make_service(name, [])
            return False
        service = self._raw.get(name)
        if service is None:
            if deleted:
                return False
            service = self._raw[name] = _RawService()
        index = parts[1]
        if self.implicit_dirs and len(parts) >= 3 and index:
            return self._apply_key(name, service, parts, node, deleted)
        if len(parts) == 3 and parts[2] == "lastAccess" and index in service.raw:
            service.raw[index].last_access = None if deleted else node.value
            return False  # our own write: nothing to recompute
        if not self._set(service, parts, node, deleted):
            return False
        return self._rebuild(name, service, index)

    def _apply_key(
        self, name: str, service: _RawService, parts: list[str], node: Node, deleted: bool
    ) -> bool:
        """One key of an instance, with implicit directories: its last key deletes it."""
        index, relative = parts[1], "/".join(parts[2:])
        held = self._keys.get((name, index))
        if deleted:
            if held is None or relative not in held:
                return False
            held.discard(relative)
            if not held:  # the instance's last key: gone, and its service with its last one
                del self._keys[(name, index)]
                service.raw.pop(index, None)
                service.built.pop(index, None)
                if not service.raw:
                    del self._raw[name]
                    return self.services.pop(name, None) is not None
                self.services[name] = make_service(name, list(service.built.values()))
                return True
        else:
            known = held is not None and index in service.raw
            if held is None:
                held = self._keys[(name, index)] = set()
            held.add(relative)
            if known and relative == "lastAccess":
                return False  # our own write: nothing to recompute
        if len(parts) > 3 or parts[2] not in ("status", "config"):
            # (a key named `status` or `config` is no directory here: only held)
            self._set(service, parts, node, deleted)
        elif service.raw.get(index) is None:
            service.raw[index] = _RawInstance()
        instance = service.raw.get(index)
        if instance is not None:
            instance.status_dir = any(k.startswith("status/") for k in held)
        return self._rebuild(name, service, index)

    def _rebuild(self, name: str, service: _RawService, index: str) -> bool:
        """Rebuild instance `index` of `name` after a change of its keys; True."""
        instance = service.raw.get(index)
        if instance is None:
            service.built.pop(index, None)
        else:
            service.built[index] = self._build(name, index, instance)
        self.services[name] = make_service(name, list(service.built.values()))
        return True

    def _set(self, service: _RawService, parts: list[str], node: Node, deleted: bool) -> bool:
        """Record one key of an instance; True when the instance may have changed."""
        index = parts[1]
        if not index:
            return False
        if len(parts) == 2:
            if deleted:
                return service.raw.pop(index, None) is not None
            if not node.dir:
                self._report.invalid(node.key, node.value, "an instance must be a directory")
                return False
            if index in service.raw:
                return False
            service.raw[index] = _RawInstance()
            return True
        instance = service.raw.get(index)
        if instance is None:
            if deleted:
                return False
            instance = service.raw[index] = _RawInstance()
        what = parts[2]
        value = None if deleted or node.dir else node.value
        if what == "location" and len(parts) == 3:
            instance.location, instance.location_error = self._location(node.key, value)
        elif what == "status" and len(parts) == 3:
            if deleted:
                instance.status_dir = False
                instance.current = instance.expected = instance.alive = None
            else:
                instance.status_dir = True
        elif what == "status" and len(parts) == 4 and parts[3] in STATUS_FIELDS:
            instance.status_dir = True
            setattr(instance, parts[3], value)
        elif what == "config" and len(parts) == 3:
            if deleted:
                instance.robots = None
        elif what == "config" and len(parts) == 4 and parts[3] == "gogeta":
            instance.robots = self._robots(node.key, value)
        elif what == "lastAccess" and len(parts) == 3:
            instance.last_access = value
        else:
            return True  # other keys (domain...) only make the instance exist
        return True

    def _location(self, key: str, value: str | None) -> tuple[Location | None, str | None]:
        """The location and, when it is invalid, why."""
        if value is None:
            return None, None
        try:
            return parse_location(value), None
        except ValueError as exc:
            self._report.invalid(key, value, str(exc))
            return None, str(exc)

    def _robots(self, key: str, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            return parse_robots(value)
        except ValueError as exc:
            self._report.invalid(key, value, str(exc))
            return None

    def raw_of(self, name: str, index: str) -> _RawInstance | None:
        """What etcd holds for an instance, as read (for describing it, not for routing)."""
        service = self._raw.get(name)
        return None if service is None else service.raw.get(index)

    @staticmethod
    def _build(name: str, index: str, raw: _RawInstance) -> Instance:
        return make_instance(
            name,
            index,
            raw.location,
            raw.status_dir,
            raw.current,
            raw.expected,
            raw.alive,
            raw.robots,
        )
