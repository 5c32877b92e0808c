"""What the request path adds to gogeta's error tree (errors.py): how an upstream failed.

The classes live in errors.py, re-exported here for the request path's modules;
`proxy.app` is the one place that turns any of them into a page.
"""

from __future__ import annotations

import http.client
from collections.abc import Iterator

from urllib3.exceptions import ReadTimeoutError

from errors import (
    BadGateway,
    BadRequest,
    ClientError,
    GatewayTimeout,
    GogetaError,
    PayloadTooLarge,
    UpstreamError,
)
from resolvers.base import STATUS_CODES, Status

__all__ = [
    "BadGateway",
    "BadRequest",
    "ClientError",
    "GatewayTimeout",
    "GogetaError",
    "PayloadTooLarge",
    "UpstreamError",
    "code_of",
    "failure_kind",
]


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
