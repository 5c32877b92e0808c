"""The outermost WSGI layer: what every request goes through before and after the proxy.

It answers gogeta's own paths under `/__gogeta/` for any Host (`proxy.admin`), hands
everything else to `proxy.app.Gogeta`, and once the last byte is sent writes the access
line, counts the request in the metrics and follows each upstream's failing state. It
reads what the app recorded in the environ (`gogeta.upstream`, `gogeta.upstream_seconds`,
`gogeta.failures`, `gogeta.retries`) and never changes an answer.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from proxy.access_log import Exchange
from proxy.admin import PREFIX as ADMIN_PREFIX
from proxy.admin import Admin
from proxy.app import Gogeta, StartResponse, hostname_of
from proxy.errors import BadRequest, failure_kind
from proxy.live import LiveView
from proxy.metrics import Metrics
from proxy.traffic import Traffic

log = logging.getLogger(__name__)

HEALTH_PATH = ADMIN_PREFIX + "health"
SUMMARY_SECONDS = 60.0  # at most one "still failing" line per upstream this often
MAX_FAILING = 1024  # upstreams followed at once; the oldest is forgotten beyond


class _Failing:
    __slots__ = ("count", "error", "since", "since_wall", "summarised", "window")

    def __init__(self, now: float, error: str) -> None:
        self.since = self.summarised = now
        self.since_wall = time.time()
        self.count = self.window = 1
        self.error = error


class UpstreamStates:
    """Each upstream's failing state, logged when it changes rather than per request.

    A backend that fails fails for every request, and the access log has each of them:
    the application log says when an upstream started failing (WARNING, with the error),
    at most once a minute that it still is (WARNING, with counts), and when it answered
    again (INFO, with how many requests failed over how long). Falsy while nothing fails,
    so the request path pays one truth test.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._failing: dict[str, _Failing] = {}

    def __bool__(self) -> bool:
        return bool(self._failing)

    def failed(self, label: str, error: str) -> None:
        now = self._clock()
        state = self._failing.get(label)
        if state is None:
            if len(self._failing) >= MAX_FAILING:  # upstreams that left while failing
                del self._failing[next(iter(self._failing))]
            self._failing[label] = _Failing(now, error)
            log.warning("upstream %s failing: %s", label, error)
            return
        state.count += 1
        state.window += 1
        state.error = error
        if now - state.summarised >= SUMMARY_SECONDS:
            log.warning(
                "upstream %s still failing, since %s: %d failed requests in the last %.0f s"
                " (%d in all), last error: %s",
                label,
                time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(state.since_wall)),
                state.window,
                now - state.summarised,
                state.count,
                error,
            )
            state.summarised = now
            state.window = 0

    def succeeded(self, label: str) -> None:
        state = self._failing.pop(label, None)
        if state is not None:
            log.info(
                "upstream %s recovered after %d failed request%s over %.1f s",
                label,
                state.count,
                "" if state.count == 1 else "s",
                self._clock() - state.since,
            )


class Front:
    """Admin paths or the app, then the access line, the metrics and upstream states.

    No lifecycle of its own: what runs beside it (the resolver's watch, the metrics
    publisher) is started and stopped by the composition root (gogeta.Process).
    """

    def __init__(
        self,
        app: Gogeta,
        access_line: Callable[[Exchange], None] | None,
        admin: Admin | None = None,
        metrics: Metrics | None = None,
        log_health: bool = True,
        live: LiveView | None = None,
    ) -> None:
        self.live = live
        self.traffic: Traffic | None = live.traffic if live is not None else None
        self.app = app
        self.access_line = access_line  # writes the line (proxy.access_log.AccessWriter)
        self.log_health = log_health  # -accessLogHealth
        self.admin = admin
        self.metrics = metrics
        self.upstreams = UpstreamStates()

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
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
        received: _Input | None = None
        if environ.get("CONTENT_LENGTH") or environ.get("HTTP_TRANSFER_ENCODING"):
            received = environ["wsgi.input"] = _Input(environ["wsgi.input"])

        def capture(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            ex.status = int(status[:3])
            return start_response(status, headers, exc_info)

        path = environ.get("PATH_INFO", "")
        if self.admin is not None and path.startswith(ADMIN_PREFIX):
            body = self.admin(environ, capture)
            logged = self.log_health or path != HEALTH_PATH
            return _Body(
                body,
                lambda sent, error: self._finish(environ, ex, began, sent, None, True, logged),
            )
        body = self.app(environ, capture)
        return _Body(
            body,
            lambda sent, error: self._finish(
                environ, ex, began, sent, error, received=received.count if received else 0
            ),
        )

    def _finish(
        self,
        environ: dict[str, Any],
        ex: Exchange,
        began: float,
        sent: int,
        error: BaseException | None,
        admin: bool = False,
        logged: bool = True,
        received: int = 0,
    ) -> None:
        ex.seconds = time.perf_counter() - began
        ex.bytes_sent = sent
        upstream = environ.get("gogeta.upstream")
        if upstream is not None:
            ex.upstream = upstream.label
            ex.upstream_seconds = environ.get("gogeta.upstream_seconds")
        if self.access_line is not None and logged:
            self.access_line(ex)
        if admin:
            return  # scrapes and probes are not traffic
        failures: list[tuple[Any, BaseException]] | None = environ.get("gogeta.failures")
        if error is not None and upstream is not None and error.__cause__ is not None:
            # The backend failed mid-body (proxy.forward cut the client): a failure too.
            failures = [*(failures or ()), (upstream, error)]
        if failures or self.upstreams:
            self._follow_upstreams(upstream, failures)
        metrics = self.metrics
        traffic = self.traffic
        if metrics is None and traffic is None:
            return
        domain = self._domain_label(ex, upstream is not None)
        if traffic is not None:
            traffic.count(
                ex.status,
                None if domain == "unknown" else domain,
                None if upstream is None else upstream.label,
                ex.upstream_seconds,
                [failed.label for failed, _ in failures] if failures else (),
            )
        if metrics is not None:
            metrics.count_request(ex.status, domain, received, sent)
            if upstream is not None:
                metrics.count_upstream(upstream, ex.status, ex.upstream_seconds)
                if environ.get("gogeta.retries"):
                    metrics.count_retry(upstream)
            for failed, exc in failures or ():
                metrics.count_failure(failed, failure_kind(exc))

    def _follow_upstreams(
        self, upstream: Any, failures: list[tuple[Any, BaseException]] | None
    ) -> None:
        for failed, exc in failures or ():
            self.upstreams.failed(failed.label, str(exc))
        # The last upstream tried answered, unless it is the last one that failed.
        if upstream is not None and (not failures or failures[-1][0] is not upstream):
            self.upstreams.succeeded(upstream.label)

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
    """The app's body, counted as it is sent; `close` (called by the server) finishes it,
    with the error that cut it, if any."""

    __slots__ = ("_body", "_done", "_error", "_sent")

    def __init__(
        self, body: Iterable[bytes], done: Callable[[int, BaseException | None], None]
    ) -> None:
        self._body = body
        self._done = done
        self._sent = 0
        self._error: BaseException | None = None

    def __iter__(self) -> Iterator[bytes]:
        try:
            for chunk in self._body:
                self._sent += len(chunk)
                yield chunk
        except Exception as exc:
            self._error = exc
            raise

    def close(self) -> None:
        try:
            close = getattr(self._body, "close", None)
            if close is not None:
                close()
        finally:
            self._done(self._sent, self._error)


class _Input:
    """The client's body stream (`wsgi.input`), counting the bytes read from it."""

    __slots__ = ("_stream", "count")

    def __init__(self, stream: Any) -> None:
        self._stream = stream
        self.count = 0

    def read(self, *args: Any) -> bytes:
        data: bytes = self._stream.read(*args)
        self.count += len(data)
        return data

    def readline(self, *args: Any) -> bytes:
        data: bytes = self._stream.readline(*args)
        self.count += len(data)
        return data

    def readlines(self, *args: Any) -> list[bytes]:
        lines: list[bytes] = self._stream.readlines(*args)
        self.count += sum(len(line) for line in lines)
        return lines

    def __iter__(self) -> Iterator[bytes]:
        while line := self.readline():
            yield line

    def __getattr__(self, name: str) -> Any:  # anything else the server's stream has
        return getattr(self._stream, name)
