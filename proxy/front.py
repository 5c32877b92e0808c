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

from proxy.access_log import Exchange
from proxy.app import Gogeta, StartResponse

access_log = logging.getLogger("gogeta.access")


class Front:
    def __init__(self, app: Gogeta, access_line: Callable[[Exchange], str] | None) -> None:
        self.app = app
        self.resolver = app.resolver
        self.access_line = access_line
        self._started_in: int | None = None

    def start(self) -> None:
        """Start the resolver's background work in this process, once.

        Idempotent per process: under gunicorn with --preload the app is built in the
        arbiter and each worker starts its own resolver after the fork.
        """
        if self._started_in != os.getpid():
            self._started_in = os.getpid()
            self.resolver.start()

    def stop(self) -> None:
        self.resolver.stop()
        self.app.forwarder.close()

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

        body = self.app(environ, capture)
        return _Body(body, lambda sent: self._finish(environ, ex, began, sent))

    def _finish(self, environ: dict[str, Any], ex: Exchange, began: float, sent: int) -> None:
        ex.seconds = time.perf_counter() - began
        ex.bytes_sent = sent
        upstream = environ.get("gogeta.upstream")
        if upstream is not None:
            ex.upstream = upstream.label
            ex.upstream_seconds = environ.get("gogeta.upstream_seconds")
        if self.access_line is not None:
            access_log.info(self.access_line(ex))


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
