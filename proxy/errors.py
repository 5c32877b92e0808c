"""The request path's errors: each one knows its HTTP code and the page that answers it.

One tree, rooted at `ProxyError`. `proxy.app` is the one place that turns an error (or a
resolver's `RoutingError`) into a page.
"""

from __future__ import annotations

import http.client
from collections.abc import Iterator

from urllib3.exceptions import ReadTimeoutError

from resolvers.base import Status


class ProxyError(Exception):
    """An answer gogeta gives itself instead of the backend's."""

    code = 500
    page = "internal_error"

    def __init__(self, detail: str = "") -> None:
        super().__init__(detail or self.__class__.__name__)
        self.detail = detail


class BadRequest(ProxyError):
    code = 400
    page = "bad_request"


class PayloadTooLarge(ProxyError):
    """A request body over `-maxBodySize`. Shown with the bad_request template."""

    code = 413
    page = "bad_request"


class UpstreamError(ProxyError):
    """The backend failed; `upstream` says which one, for the logs.

    `connect_failed`: no connection was made, so nothing of the request was sent.
    `replayable`: the request can go to another instance (nothing sent, or an idempotent
    request without a body).
    """

    def __init__(
        self,
        detail: str,
        upstream: str = "",
        connect_failed: bool = False,
        replayable: bool = False,
    ) -> None:
        super().__init__(detail)
        self.upstream = upstream
        self.connect_failed = connect_failed
        self.replayable = replayable or connect_failed


class BadGateway(UpstreamError):
    """Refused, reset, or an invalid answer from the backend."""

    code = 502
    page = "bad_gateway"


class GatewayTimeout(UpstreamError):
    """The backend did not connect or answer within the configured timeouts."""

    code = 504
    page = "gateway_timeout"


# docs/behaviour.md §3.2: status → HTTP code. Everything not listed (stopped, error) is a 500.
STATUS_CODES: dict[Status, int] = {
    Status.NOTFOUND: 404,
    Status.STARTING: 503,
    Status.PASSIVATED: 503,
}


def code_of(status: Status) -> int:
    return STATUS_CODES.get(status, 500)


def failure_kind(exc: BaseException) -> str:
    """How an exchange with an upstream failed, for the metrics: `connect_refused` (no
    connection: refused, unreachable), `connect_timeout`, `timeout` (no answer in time),
    `reset` (closed or reset before the answer was complete) or `bad_answer`.

    `exc` is an UpstreamError, or the error that cut a body already on its way."""
    if isinstance(exc, UpstreamError) and exc.connect_failed:
        return "connect_timeout" if isinstance(exc, GatewayTimeout) else "connect_refused"
    if isinstance(exc, GatewayTimeout):
        return "timeout"
    for cause in _causes(exc):
        if isinstance(cause, ReadTimeoutError | TimeoutError):
            return "timeout"
        if cause is not exc and isinstance(cause, ConnectionError | http.client.IncompleteRead):
            return "reset"
    return "bad_answer"


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """`exc`, its causes, and the errors urllib3 wraps in its own errors' arguments."""
    seen: set[int] = set()
    todo = [exc]
    while todo:
        current = todo.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        todo.extend(a for a in current.args if isinstance(a, BaseException))
        todo.extend(c for c in (current.__cause__, current.__context__) if c is not None)
