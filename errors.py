"""gogeta's own errors: one tree, each error carrying what its answer needs.

    GogetaError                     code, page, log_level, close
    ├── ClientError                 the request is at fault: 4xx, the connection closes
    │   ├── BadRequest              400 (a malformed chunk, an invalid Host...)
    │   ├── PayloadTooLarge         413 (-maxBodySize)
    │   ├── RejectedRequest         refused by the framing checks (framing.request)
    │   └── ClientTimeout           408, a head not sent within -clientTimeout
    ├── UpstreamError               the backend is at fault: 502 / 504, for that request only
    │   ├── BadGateway              refused, reset, an invalid answer
    │   └── GatewayTimeout          no connection or no answer in time
    ├── RoutingError                no upstream: a status page (resolvers.base, beside Status)
    ├── SourceError                 etcd
    │   ├── SourceDown              no endpoint answered: try again later
    │   └── WriteRefused            etcd answered no: trying again won't help
    └── ConfigError                 an operator's setting: gogeta does not start (exit 2)

Families are caught by concern (`except ClientError`), and the one place that turns an
error into a page (proxy.app) reads these attributes instead of testing classes. This
module is the bottom layer: it imports nothing of gogeta's.
"""

from __future__ import annotations

import http
import logging


class GogetaError(Exception):
    """The root: `code` and `page` answer it, `log_level` logs it, `close` ends the
    connection after the answer (the client's framing can no longer be trusted)."""

    code = 500
    page = "internal_error"
    log_level = logging.ERROR
    close = False

    def __init__(self, detail: str = "") -> None:
        super().__init__(detail or self.__class__.__name__)
        self.detail = detail


class ClientError(GogetaError):
    code = 400
    page = "bad_request"
    log_level = logging.INFO  # a client's mistake is no operator's problem
    close = True
    headers: tuple[tuple[str, str], ...] = ()

    def response(self) -> bytes:
        """The whole answer, status line to body, for a connection about to close: what
        the server sends itself when the app never saw the request."""
        phrase = http.HTTPStatus(self.code).phrase
        body = f"{self.code} {phrase}: {self.detail}\n".encode("latin-1", "replace")
        extra = "".join(f"{name}: {value}\r\n" for name, value in self.headers)
        head = (
            f"HTTP/1.1 {self.code} {phrase}\r\n"
            "Content-Type: text/plain; charset=utf-8\r\n"
            f"Content-Length: {len(body)}\r\n"
            f"{extra}"
            "Connection: close\r\n\r\n"
        )
        return head.encode("latin-1") + body


class BadRequest(ClientError):
    pass


class PayloadTooLarge(ClientError):
    """A request body over `-maxBodySize`. Shown with the bad_request template."""

    code = 413


class RejectedRequest(ClientError, ValueError):
    """A request refused before routing by the framing checks; answered by the server
    itself (`response`), the connection closed. A ValueError too, which is what pywsgi
    expects of a request it cannot parse."""

    def __init__(self, code: int, reason: str, headers: tuple[tuple[str, str], ...] = ()) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason
        self.headers = headers


class ClientTimeout(ClientError, OSError):
    """A client too slow to send its request head. An OSError too, so that pywsgi, which
    closes quietly on socket errors while reading a request line, does so."""

    code = 408

    def __init__(self, detail: str = "request head not received in time") -> None:
        ClientError.__init__(self, detail)


class UpstreamError(GogetaError):
    """The backend failed; `upstream` says which one, for the logs.

    `connect_failed`: no connection was made, so nothing of the request was sent.
    `replayable`: the request can go to another instance (nothing sent, or an idempotent
    request without a body). Not logged per request: proxy.front logs each upstream's
    failing state when it changes.
    """

    code = 502
    page = "bad_gateway"
    log_level = logging.DEBUG

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


class GatewayTimeout(UpstreamError):
    """The backend did not connect or answer within the configured timeouts."""

    code = 504
    page = "gateway_timeout"


class SourceError(GogetaError):
    """etcd could not be read or written."""

    log_level = logging.WARNING


class SourceDown(SourceError):
    """No etcd endpoint answered a write: the caller may try again later."""


class WriteRefused(SourceError):
    """etcd answered a write with a refusal (a key in the way...): trying again won't help."""


class ConfigError(GogetaError):
    """A setting gogeta cannot start with; the message names it."""
