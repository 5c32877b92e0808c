"""gogeta's own paths under `/__gogeta/`, answered for any Host, before any routing.

- `health`: 200 once the resolver has loaded its table and etcd has not been unreachable
  for longer than `-healthGraceSeconds`; 503 otherwise, with the reason. For load
  balancers and the Docker HEALTHCHECK, so open to every client.
- `routes`: `Resolver.describe()` (the live table and sync state) as JSON, and with
  `-tlsPort` the certificates served (`tls`: state, expiry, why one is skipped; never a key).
- `metrics`: Prometheus text (`proxy.metrics`).

`routes` and `metrics` show the customers' table and traffic: only clients whose address
is in `-trustedNetworks` get them; others get the same 404 page as an unknown path.
Every answer is JSON or text and carries `Cache-Control: no-store`.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from proxy.metrics import Metrics
from proxy.pages import StatusPages
from proxy.trust import Network, is_trusted
from resolvers.base import Resolver

PREFIX = "/__gogeta/"

StartResponse = Callable[..., Any]


def health_of(described: dict[str, Any], grace: float, now: float) -> tuple[int, dict[str, Any]]:
    """HTTP code and JSON body of `health` for a resolver's `stats()`."""
    since = described.get("unreachable_since")
    body: dict[str, Any] = {
        "status": "ok",
        "resolver": described.get("resolver"),
        "loaded": bool(described.get("loaded")),
        "etcd_index": described.get("etcd_index"),
        "etcd_unreachable_seconds": None if since is None else round(now - since, 1),
        "pid": os.getpid(),
    }
    # What etcd last said or did (wrong credentials, wrong API...) tells the operator why.
    problem = described.get("etcd_problem")  # etcd answers, but refuses: say why
    error = described.get("last_error")
    why = f": {error}" if error else ""
    if not body["loaded"]:
        body.update(status="unavailable", reason=problem or f"routing table not loaded yet{why}")
        return 503, body
    if since is not None and now - since > grace:
        reason = problem or f"etcd unreachable for {now - since:.0f}s{why}"
        body.update(status="unavailable", reason=reason)
        return 503, body
    return 200, body


class Admin:
    def __init__(
        self,
        resolver: Resolver,
        pages: StatusPages,
        metrics: Metrics,
        trusted: Sequence[Network],
        health_grace: float,
        certificates: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        self.certificates = certificates
        self.resolver = resolver
        self.pages = pages
        self.metrics = metrics
        self.trusted = tuple(trusted)
        self.health_grace = health_grace

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        name = environ.get("PATH_INFO", "")[len(PREFIX) :]
        method = environ.get("REQUEST_METHOD")
        if name == "health" or (
            name in ("routes", "metrics") and is_trusted(environ.get("REMOTE_ADDR"), self.trusted)
        ):
            if method not in ("GET", "HEAD"):
                return self._send(
                    start_response,
                    405,
                    "text/plain; charset=utf-8",
                    b"GET or HEAD\n",
                    method,
                    [("Allow", "GET, HEAD")],
                )
            if name == "health":
                code, body = health_of(self.resolver.stats(), self.health_grace, time.time())
                return self._json(start_response, code, body, method)
            if name == "routes":
                routes = self.resolver.describe()
                if self.certificates is not None:
                    routes["tls"] = self.certificates()
                return self._json(start_response, 200, routes, method)
            content_type, data = self.metrics.render()
            return self._send(start_response, 200, content_type, data, method)
        page = self.pages.render("notfound", 404)
        start_response(page.status, page.headers)
        return [page.body]

    def _json(
        self, start_response: StartResponse, code: int, body: Any, method: str | None
    ) -> Iterable[bytes]:
        data = json.dumps(body, indent=1, sort_keys=True, default=str).encode() + b"\n"
        return self._send(start_response, code, "application/json", data, method)

    @staticmethod
    def _send(
        start_response: StartResponse,
        code: int,
        content_type: str,
        data: bytes,
        method: str | None,
        extra: Sequence[tuple[str, str]] = (),
    ) -> Iterable[bytes]:
        reasons = {200: "OK", 405: "Method Not Allowed", 503: "Service Unavailable"}
        start_response(
            f"{code} {reasons[code]}",
            [
                ("Content-Type", content_type),
                ("Content-Length", str(len(data))),
                ("Cache-Control", "no-store"),
                *extra,
            ],
        )
        return [b"" if method == "HEAD" else data]
