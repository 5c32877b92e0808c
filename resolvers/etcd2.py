"""The etcd v2 source: a watcher per directory, and the writes gogeta makes through v2.

`V2Source` is the `Source` (resolvers/source.py) of etcd's v2 API (`/v2/keys`): it mirrors
each directory with a watcher (resolvers/etcd2_watcher.py) and makes gogeta's writes
(docs/behaviour.md §5.5), each tried on every endpoint in turn: a `lastAccess` that never
re-creates a deleted instance, the wake-up's compare-and-swap, and ACME's plain keys. The
client, and what etcd's answers mean, are resolvers/etcd2_client.py's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import etcd

from resolvers.endpoints import on_any_endpoint
from resolvers.etcd2_client import ETCD_DOWN, ETCD_REFUSED, Endpoints
from resolvers.etcd2_watcher import PROBE_TIMEOUT, WATCH_TIMEOUT, Watcher
from resolvers.source import (
    EtcdAccess,
    Mirror,
    OnChange,
    SourceDown,
    WatchedSource,
    WriteRefused,
)

T = TypeVar("T")


class V2Source(WatchedSource[Watcher]):
    """etcd's v2 API (`/v2/keys`) as a `Source`: one watcher greenlet per directory."""

    name = "etcd v2"
    implicit_dirs = False

    def __init__(
        self,
        access: EtcdAccess,
        watch_timeout: float = WATCH_TIMEOUT,
        health_grace: float | None = None,
    ) -> None:
        super().__init__()
        self.access = access
        self.urls = list(access.urls)
        self.watch_timeout = watch_timeout
        self.probe_timeout = PROBE_TIMEOUT
        if health_grace is not None:
            # A frozen etcd is noticed within about half the grace (a silent watch probed),
            # so health turns 503 near when the grace says, not a whole long poll later.
            self.watch_timeout = min(watch_timeout, max(1.0, health_grace / 2))
            self.probe_timeout = min(PROBE_TIMEOUT, max(1.0, health_grace / 4))
        self.writes = Endpoints(self.urls, access=access)

    def watcher(self, mirror: Mirror, on_change: OnChange) -> Watcher:
        return Watcher(
            Endpoints(self.urls, access=self.access),
            mirror,
            on_change,
            watch_timeout=self.watch_timeout,
            reachability=self.reachability,
            probe_timeout=self.probe_timeout,
        )

    def touch(self, service_dir: str, service: str, index: str, stamp: str) -> None:
        base = f"{service_dir}/{service}/{index}"
        self._on_any_endpoint(lambda client: self._touch(client, service_dir, base, stamp))

    def wake(self, service_dir: str, service: str, index: str) -> bool:
        key = f"{service_dir}/{service}/{index}/status/expected"
        return self._on_any_endpoint(lambda client: self._wake(client, key))

    def _on_any_endpoint(self, write: Callable[[Any], T]) -> T:
        """One write (or read) with a client of the endpoint in use, the next on failure."""

        def once() -> T:
            try:
                try:
                    return write(self.writes.client())
                except etcd.EtcdClusterIdChanged:
                    # Another etcd answered (the watchers reload from it): the client knows
                    # its id now, and the write is for that etcd too.
                    return write(self.writes.client())
            except ETCD_REFUSED as exc:  # etcd answered: another endpoint would say the same
                raise WriteRefused(f"{type(exc).__name__}: {exc}") from exc
            except ETCD_DOWN as exc:
                raise SourceDown(str(exc)) from exc

        return on_any_endpoint(self.writes, once, self.reachability)

    def get(self, key: str) -> str | None:
        def read(client: Any) -> str | None:
            try:
                value = client.read(key).value
            except etcd.EtcdKeyNotFound:
                return None
            return None if value is None else str(value)

        return self._on_any_endpoint(read)

    def create(self, key: str, value: str, ttl: int | None = None) -> bool:
        def write(client: Any) -> bool:
            try:
                client.write(key, value, prevExist=False, ttl=ttl)
            except etcd.EtcdAlreadyExist:
                return False
            return True

        return self._on_any_endpoint(write)

    def put(self, key: str, value: str) -> None:
        self._on_any_endpoint(lambda client: client.write(key, value))

    def delete(self, key: str, value: str) -> bool:
        def remove(client: Any) -> bool:
            try:
                client.delete(key, prevValue=value)
            except (etcd.EtcdKeyNotFound, etcd.EtcdCompareFailed):
                return False
            return True

        return self._on_any_endpoint(remove)

    @staticmethod
    def _touch(client: Any, service_dir: str, base: str, stamp: str) -> None:
        key = f"{base}/lastAccess"
        try:
            client.write(key, stamp, prevExist=True)  # an update never creates directories
            return
        except etcd.EtcdKeyNotFound:
            pass  # the instance's first lastAccess, or the instance was deleted
        written = int(client.write(key, stamp).modifiedIndex)
        # etcd creates missing directories on a write: if this one created the instance's
        # (deleted since the request), remove what it created, or the deleted instance
        # would come back as a ghost without a location.
        path = base
        try:
            while path != service_dir and int(client.read(path).createdIndex) == written:
                if path == base:
                    client.delete(key, prevIndex=written)
                client.delete(path, dir=True)
                path = path.rpartition("/")[0]
        except (etcd.EtcdKeyNotFound, etcd.EtcdCompareFailed, etcd.EtcdDirNotEmpty):
            pass  # written to meanwhile: it exists again for real

    @staticmethod
    def _wake(client: Any, key: str) -> bool:
        try:
            client.write(key, "started", prevValue="passivated")
        except (etcd.EtcdCompareFailed, etcd.EtcdKeyNotFound):
            return False
        return True
