"""The `Dummy` resolver (docs/behaviour.md §5.3): every hostname goes to one URL, no etcd."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from resolvers.base import Upstream
from resolvers.model import upstream_of_url


class DummyResolver:
    """Routes everything to `target` (default http://localhost:8080/, docs/behaviour.md §5.3)."""

    def __init__(self, target: str) -> None:
        self._upstream = upstream_of_url(target)

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def resolve(
        self, hostname: str, avoid: Collection[Upstream] = (), wake: bool = True
    ) -> Upstream:
        return self._upstream

    def failed(self, upstream: Upstream) -> None:
        pass  # one target: nothing else to prefer

    def wait_for_change(self, timeout: float) -> bool:
        return False  # a fixed target never changes, and never makes anyone wait

    def robots(self, hostname: str) -> str | None:
        return None

    def routed(self, hostname: str) -> bool:
        return False  # every name goes to one target: none is a domain of its own

    def ready(self) -> bool:
        return True

    def stats(self) -> dict[str, Any]:
        return {
            "resolver": "Dummy",
            "loaded": True,
            "etcd_index": None,
            "unreachable_since": None,
            "last_error": None,
            "counters": {},
            "gauges": {},
        }

    def describe(
        self, query: str | None = None, page: int | None = None, per_page: int = 200
    ) -> dict[str, Any]:
        u = self._upstream
        described = {
            **self.stats(),
            "domains": {"*": {"type": "uri", "value": f"{u.scheme}://{u.host}:{u.port}{u.path}"}},
            "services": {},
        }
        if query is None and page is None:
            return described
        if query and query.strip() not in ("", "*"):
            described["domains"] = {}
        total = len(described["domains"])
        described["page"] = {
            "query": (query or "").strip().lower(),
            "number": 1,
            "per_page": per_page,
            "total": total,
            "pages": 1,
        }
        return described
