"""The outermost WSGI layer: what every request goes through before and after the proxy.

It answers gogeta's own paths under `/__gogeta/` for any Host (`proxy.admin`), hands
everything else to `proxy.app.Gogeta`, and once the last byte is sent writes the access
line and counts the request in the metrics. It reads what the app recorded in the environ
(`gogeta.upstream`, `gogeta.upstream_seconds`) and never changes an answer.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import gevent

from proxy.access_log import Exchange
from proxy.admin import PREFIX as ADMIN_PREFIX
from proxy.admin import Admin
from proxy.app import Gogeta, StartResponse, hostname_of
from proxy.errors import BadRequest
from proxy.metrics import REFRESH_SECONDS, Metrics

access_log = logging.getLogger("gogeta.access")
log = logging.getLogger(__name__)


class Front:
    # -clientTimeout, for the server that runs this app (gogeta.serve, gunicorn_hooks)
    client_timeout: float = 0.0

    def __init__(
        self,
        app: Gogeta,
        access_line: Callable[[Exchange], str] | None,
        admin: Admin | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.app = app
        self.resolver = app.resolver
        self.access_line = access_line
        self.admin = admin
        self.metrics = metrics
        self._started_in: int | None = None
        self._refresher: gevent.Greenlet | None = None

    def start(self) -> None:
        """Start the resolver's background work in this process, once.

        Idempotent per process: under gunicorn with --preload the app is built in the
        arbiter and each worker starts its own resolver after the fork.
        """
        if self._started_in != os.getpid():
            self._started_in = os.getpid()
            self.resolver.start()
            if self.metrics is not None and self.metrics.multiprocess:
                self._refresher = gevent.spawn(self._refresh_metrics, self.metrics)

    def stop(self) -> None:
        if self._refresher is not None:
            self._refresher.kill()
        self.resolver.stop()
        self.app.forwarder.close()

    def count_connection(self, delta: int) -> None:
        """+1 / -1 as a client connection opens and closes (called by the server)."""
        if self.metrics is not None:
            self.metrics.count_connection(delta)

    def _refresh_metrics(self, metrics: Metrics) -> None:
        # Under gunicorn a scrape reaches one worker: every worker keeps its resolver's
        # numbers in the shared files so the scrape shows them all.
        while True:
            try:
                metrics.update_resolver(self.resolver.describe())
            except Exception:
                log.exception("cannot update the resolver metrics")
            gevent.sleep(REFRESH_SECONDS)

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if self._started_in != os.getpid():
            self.start()  # a worker whose server hook did not start it
        ex = Exchange(
            started=time.time(),
            client=environ.get("REMOTE_ADDR") or "",
            method=environ.get("REQUEST_METHOD", ""),
            target=environ.get("RAW_URI") or environ.get("PATH_INFO", ""),
            protocol=environ.get("SERVER_PROTOCOL", ""),
            host=environ.get("HTTP_HOST", ""),
            referer=environ.get("HTTP_REFERER", ""),
            user_agent=environ.get("HTTP_USER_AGENT", ""),
        )
        began = time.perf_counter()

        def capture(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            ex.status = int(status[:3])
            return start_response(status, headers, exc_info)

        if self.admin is not None and environ.get("PATH_INFO", "").startswith(ADMIN_PREFIX):
            body = self.admin(environ, capture)
            return _Body(body, lambda sent: self._finish(environ, ex, began, sent, admin=True))
        body = self.app(environ, capture)
        return _Body(body, lambda sent: self._finish(environ, ex, began, sent))

    def _finish(
        self, environ: dict[str, Any], ex: Exchange, began: float, sent: int, admin: bool = False
    ) -> None:
        ex.seconds = time.perf_counter() - began
        ex.bytes_sent = sent
        upstream = environ.get("gogeta.upstream")
        if upstream is not None:
            ex.upstream = upstream.label
            ex.upstream_seconds = environ.get("gogeta.upstream_seconds")
        if self.access_line is not None:
            access_log.info(self.access_line(ex))
        if self.metrics is not None and not admin:  # scrapes and probes are not traffic
            self.metrics.count_request(ex.status, self._domain_label(ex, upstream is not None))
            if ex.upstream_seconds is not None:
                self.metrics.observe_upstream(ex.upstream_seconds)

    @staticmethod
    def _domain_label(ex: Exchange, routed: bool) -> str:
        # Known to the resolver: forwarded, or one of its status pages (503 starting...).
        # A 404 or 400 from gogeta itself means a hostname it does not serve.
        if not routed and ex.status in (400, 404):
            return "unknown"
        try:
            return hostname_of(ex.host)
        except BadRequest:
            return "unknown"


class _Body:
    """The app's body, counted as it is sent; `close` (called by the server) finishes it."""

    __slots__ = ("_body", "_done", "_sent")

    def __init__(self, body: Iterable[bytes], done: Callable[[int], None]) -> None:
        self._body = body
        self._done = done
        self._sent = 0

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self._body:
            self._sent += len(chunk)
            yield chunk

    def close(self) -> None:
        try:
            close = getattr(self._body, "close", None)
            if close is not None:
                close()
        finally:
            self._done(self._sent)
