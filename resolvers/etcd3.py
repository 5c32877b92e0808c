"""The etcd v3 source: a watcher per prefix, and the writes gogeta makes through v3.

`V3Source` is the `Source` (resolvers/source.py) of etcd's v3 API: it mirrors each prefix
with a watcher (resolvers/etcd3_watcher.py) and makes gogeta's writes (docs/behaviour.md
§5.5) as transactions, each tried on every endpoint in turn: a `lastAccess` that never
re-creates a deleted instance, the wake-up's compare-and-swap, and ACME's plain keys (a TTL
is a lease). The JSON gateway, and what etcd's answers mean, are resolvers/etcd3_gateway.py's.
"""

from __future__ import annotations

from typing import Any

from resolvers.endpoints import on_any_endpoint
from resolvers.etcd3_gateway import Compacted, EtcdDown, EtcdRefused, Gateway, b64, unb64
from resolvers.etcd3_watcher import WATCH_TIMEOUT, Refusals, Watcher
from resolvers.source import (
    EtcdAccess,
    Mirror,
    OnChange,
    SourceDown,
    WatchedSource,
    WriteRefused,
)


class V3Source(WatchedSource[Watcher]):
    """etcd's v3 API (its JSON gateway) as a `Source`: one watcher greenlet per prefix."""

    name = "etcd v3"
    implicit_dirs = True  # v3 has keys only

    def __init__(self, access: EtcdAccess, watch_timeout: float = WATCH_TIMEOUT) -> None:
        super().__init__()
        self.access = access
        self.watch_timeout = watch_timeout
        self.refusals = Refusals()
        self.writes = Gateway(access)

    def watcher(self, mirror: Mirror, on_change: OnChange) -> Watcher:
        return Watcher(
            Gateway(self.access),
            mirror,
            on_change,
            watch_timeout=self.watch_timeout,
            reachability=self.reachability,
            refusals=self.refusals,
        )

    def endpoint(self) -> None:
        return None  # not reported by this source (its state's `endpoint` stays None)

    def touch(self, service_dir: str, service: str, index: str, stamp: str) -> None:
        # A put only while the instance's `location` exists (gogeta only routes to an
        # instance that has one): a lastAccess never re-creates a deleted instance.
        base = f"{service_dir}/{service}/{index}"
        self._on_any_endpoint(
            {
                "compare": [
                    {
                        "key": b64(f"{base}/location"),
                        "result": "GREATER",
                        "target": "CREATE",
                        "create_revision": "0",
                    }
                ],
                "success": [
                    {"request_put": {"key": b64(f"{base}/lastAccess"), "value": b64(stamp)}}
                ],
            }
        )

    def wake(self, service_dir: str, service: str, index: str) -> bool:
        key = b64(f"{service_dir}/{service}/{index}/status/expected")
        answer = self._on_any_endpoint(
            {
                "compare": [
                    {"key": key, "result": "EQUAL", "target": "VALUE", "value": b64("passivated")}
                ],
                "success": [{"request_put": {"key": key, "value": b64("started")}}],
            }
        )
        return bool(answer.get("succeeded"))  # absent when the compare failed

    def get(self, key: str) -> str | None:
        kvs = self._on_any_endpoint({"key": b64(key)}, "/v3/kv/range").get("kvs") or []
        return unb64(kvs[0].get("value", "")) if kvs else None

    def create(self, key: str, value: str, ttl: int | None = None) -> bool:
        put: dict[str, Any] = {"key": b64(key), "value": b64(value)}
        if ttl is not None:
            put["lease"] = self._on_any_endpoint({"TTL": str(ttl)}, "/v3/lease/grant")["ID"]
        answer = self._on_any_endpoint(
            {
                "compare": [
                    {"key": b64(key), "result": "EQUAL", "target": "CREATE", "create_revision": "0"}
                ],
                "success": [{"request_put": put}],
            }
        )
        if answer.get("succeeded"):
            return True
        if "lease" in put:  # not needed: not left to expire on its own
            self._on_any_endpoint({"ID": put["lease"]}, "/v3/lease/revoke")
        return False

    def put(self, key: str, value: str) -> None:
        self._on_any_endpoint({"key": b64(key), "value": b64(value)}, "/v3/kv/put")

    def delete(self, key: str, value: str) -> bool:
        answer = self._on_any_endpoint(
            {
                "compare": [
                    {"key": b64(key), "result": "EQUAL", "target": "VALUE", "value": b64(value)}
                ],
                "success": [{"request_delete_range": {"key": b64(key)}}],
            }
        )
        return bool(answer.get("succeeded"))

    def _on_any_endpoint(self, body: dict[str, Any], path: str = "/v3/kv/txn") -> dict[str, Any]:
        """One call (a transaction unless `path` says) to the endpoint in use, the next on
        failure."""

        def once() -> dict[str, Any]:
            try:
                return self.writes.call(path, body)
            except (EtcdRefused, Compacted) as exc:  # another endpoint would say the same
                raise WriteRefused(str(exc)) from exc
            except EtcdDown as exc:
                raise SourceDown(f"{self.writes.current}: {exc}") from exc

        return on_any_endpoint(self.writes, once, self.reachability)
