"""The WSGI application: one request from hostname to answer (docs/behaviour.md §2).

It asks the resolver where to go and never waits for etcd; it turns every error into a
page in one place (`_error_page`), so a failure is an answer, never a traceback to the
client, and the server keeps serving.
"""

from __future__ import annotations

import logging
import re
import socket
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from framing.response import InvalidAnswer, relay_head
from proxy.answer import Response
from proxy.errors import BadGateway, BadRequest, GogetaError, PayloadTooLarge, UpstreamError
from proxy.forward import Forwarder, is_replayable, stream_body
from proxy.pages import FALLBACK_PAGE, Page, StatusPages, wants_json
from proxy.static import PREFIX as STATIC_PREFIX
from proxy.static import StaticFiles
from proxy.trust import Network, TrustedPeers
from proxy.tunnel import Tunnels, wants_upgrade
from proxy.wake import WakeFilter
from resolvers.base import Resolver, RoutingError, Status, Upstream
from transport.sockets import shutdown

log = logging.getLogger(__name__)

# Statuses of an application on its way up (docs/behaviour.md §3.3): worth waiting for.
WAITING = frozenset({Status.STARTING, Status.PASSIVATED})

StartResponse = Callable[..., Any]

# RFC 8555 §8.3: where an ACME server asks for a token's key authorization.
CHALLENGE_PREFIX = "/.well-known/acme-challenge/"

# A hostname as it may appear in Host: letters, digits, '-', '.', '_' (seen in the wild),
# or a bracketed IPv6 literal. Anything else is a bad request, not a lookup.
_HOST_RE = re.compile(r"(?:[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*\.?|\[[0-9A-Fa-f:.]+\])(?::\d{1,5})?")


_HOSTNAMES: dict[str, str] = {}  # Host header -> hostname, for the Hosts seen lately


def hostname_of(host_header: str | None) -> str:
    """docs/behaviour.md §2.1: Host without its port, lower-cased, one leading `www.` removed."""
    if not host_header:
        raise BadRequest(f"invalid Host header {host_header!r}")
    hostname = _HOSTNAMES.get(host_header)
    if hostname is None:
        hostname = _parse_hostname(host_header)
        if len(_HOSTNAMES) >= 4096:  # bounded: clients sending random Hosts
            _HOSTNAMES.clear()
        _HOSTNAMES[host_header] = hostname
    return hostname


def _parse_hostname(host_header: str) -> str:
    if len(host_header) > 255 or not _HOST_RE.fullmatch(host_header):
        raise BadRequest(f"invalid Host header {host_header!r}")
    if host_header.startswith("["):
        hostname = host_header[: host_header.index("]") + 1]
    else:
        hostname = host_header.partition(":")[0].rstrip(".")
    hostname = hostname.lower()
    if hostname.startswith("www."):
        hostname = hostname[4:]
    return hostname


def _note_failure(environ: dict[str, Any], upstream: Upstream, exc: UpstreamError) -> None:
    """For proxy.front (metrics, the upstreams' failing state): which upstream failed how."""
    failures = environ.get("gogeta.failures")
    if failures is None:
        failures = environ["gogeta.failures"] = []
    failures.append((upstream, exc))


class Gogeta:
    """The WSGI callable. Holds no routing state of its own: the resolver does."""

    def __init__(
        self,
        resolver: Resolver,
        pages: StatusPages,
        forwarder: Forwarder,
        tunnels: Tunnels,
        static: StaticFiles,
        force_ssl: bool = False,
        url_header: str = "",
        wake_hold: float = 0.0,
        trusted_proxies: Iterable[Network] = (),
        no_wake_agents: re.Pattern[str] | None = None,
        tls_port: int = 0,
        hsts_max_age: int = 0,
        acme_answer: Callable[[str], str | None] | None = None,
    ) -> None:
        # docs/behaviour.md §2.2: the redirect names gogeta's own TLS port unless it is
        # https's default (or gogeta serves no TLS: a load balancer's 443, then).
        self.https_port = f":{tls_port}" if tls_port and tls_port != 443 else ""
        # RFC 6797 §7.2: only over a secure transport, so only on what gogeta served by TLS.
        self.hsts = (
            ("Strict-Transport-Security", f"max-age={hsts_max_age}") if hsts_max_age else None
        )
        self.wake_hold = wake_hold
        self.wake_filter = WakeFilter(no_wake_agents)
        self.proxies = TrustedPeers(trusted_proxies)
        self.resolver = resolver
        self.pages = pages
        self.forwarder = forwarder
        self.static = static
        self.force_ssl = force_ssl
        self.url_header = url_header
        self.tunnels = tunnels
        # token → key authorization being validated (docs/behaviour.md §10), None: ACME off
        self.acme_answer = acme_answer

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        hostname = ""
        if self.acme_answer is not None and environ.get("PATH_INFO", "").startswith(
            CHALLENGE_PREFIX
        ):
            # For any Host, before routing and the https redirect: the validation request
            # names a domain that may have no route to an application, nor TLS yet.
            return self._challenge(environ, start_response, self.acme_answer)
        if self.hsts is not None and environ.get("wsgi.url_scheme") == "https":
            start_response = self._with_hsts(start_response)
        try:
            hostname = hostname_of(environ.get("HTTP_HOST"))
            return self._serve(environ, start_response, hostname)
        except Exception as exc:
            page = self._error_page(environ, hostname, exc)
            if isinstance(exc, PayloadTooLarge):
                return self._send_and_stop_reading(environ, start_response, page)
            return self._send(start_response, page)

    @staticmethod
    def _challenge(
        environ: dict[str, Any],
        start_response: StartResponse,
        answer_of: Callable[[str], str | None],
    ) -> Iterable[bytes]:
        answer = answer_of(environ["PATH_INFO"][len(CHALLENGE_PREFIX) :])
        body = (answer or "no such ACME challenge\n").encode("ascii", "replace")
        status = "200 OK" if answer is not None else "404 Not Found"
        start_response(status, [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
        return [body]

    def _with_hsts(self, start_response: StartResponse) -> StartResponse:
        """`start_response` adding Strict-Transport-Security unless the backend set its own
        (the application may want `includeSubDomains` or `preload`)."""
        hsts = self.hsts
        assert hsts is not None

        def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            if not any(name.lower() == "strict-transport-security" for name, _ in headers):
                headers = [*headers, hsts]
            return start_response(status, headers, exc_info)

        return start

    def _error_page(self, environ: dict[str, Any], hostname: str, exc: Exception) -> Page:
        """The page answering `exc`, the one place errors become pages (docs/behaviour.md §2.8)."""
        as_json = wants_json(environ)  # API clients get the same answer as JSON
        try:
            if isinstance(exc, GogetaError):
                if isinstance(exc, UpstreamError):
                    failures = environ.get("gogeta.failures")
                    upstream = environ.get("gogeta.upstream")
                    if upstream is not None and (not failures or failures[-1][1] is not exc):
                        _note_failure(environ, upstream, exc)  # failed after _send_upstream
                log.log(exc.log_level, "%s %s: %s", hostname, exc.code, exc)
                page = self.pages.render(exc.page, exc.code, hostname, as_json)
                if exc.close:
                    # The client's framing can't be trusted any more (a malformed chunk...):
                    # whatever follows on this connection is not a request.
                    page.headers.append(("Connection", "close"))
                return page
            log.error(
                "An error occurred serving %s %s for %s",
                environ.get("REQUEST_METHOD"),
                environ.get("PATH_INFO"),
                hostname or environ.get("HTTP_HOST"),
                exc_info=exc,
            )
            return self.pages.render("internal_error", 500, hostname, as_json)
        except Exception:
            # A page that fails to render (an operator's template tripping over some value)
            # is itself an unexpected error: a 500, never a traceback sent to the client.
            log.exception("The page answering %s failed to render", type(exc).__name__)
            try:
                return self.pages.render("internal_error", 500, hostname)
            except Exception:
                log.exception("The internal_error page failed to render")
                return FALLBACK_PAGE

    def _serve(
        self, environ: dict[str, Any], start_response: StartResponse, hostname: str
    ) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        # One answer per request, for the redirect below and every header sent upstream.
        trusted = environ.get("REMOTE_ADDR") in self.proxies

        if self.force_ssl and self._proto(environ, trusted) != "https":
            query = environ.get("QUERY_STRING", "")
            raw_path = (environ.get("RAW_URI") or path).partition("?")[0]
            location = f"https://{hostname}{self.https_port}{raw_path}" + (
                f"?{query}" if query else ""
            )
            start_response(
                "301 Moved Permanently", [("Location", location), ("Content-Length", "0")]
            )
            return [b""]

        if path.startswith(STATIC_PREFIX):
            return self._static(environ, start_response, hostname, path)

        if path == "/robots.txt":
            text = self.resolver.robots(hostname)
            if text is not None:
                data = text.encode("utf-8")
                start_response(
                    "200 OK",
                    [
                        ("Content-Type", "text/plain; charset=utf-8"),
                        ("Content-Length", str(len(data))),
                    ],
                )
                return [data]

        # Only a visitor wakes a sleeping application (README, "Wake-ups").
        wake = self.wake_filter.wakes(
            environ.get("REQUEST_METHOD", ""), path, environ.get("HTTP_USER_AGENT", "")
        )
        if wants_upgrade(environ):
            upstream = self.resolver.resolve(hostname, wake=wake)
            environ["gogeta.upstream"] = upstream
            return self.tunnels.open(environ, start_response, upstream, trusted)

        return self._send_upstream(environ, start_response, hostname, trusted, wake)

    @staticmethod
    def _begin(
        environ: dict[str, Any],
        start_response: StartResponse,
        upstream: Upstream,
        response: Response,
    ) -> Iterable[bytes]:
        """Check the answer's head, read its first body block, then start the answer."""
        try:
            try:
                head = relay_head(
                    response.status,
                    response.reason,
                    response.version,
                    response.headers.items(),
                    method=environ["REQUEST_METHOD"],
                    client_version=environ.get("SERVER_PROTOCOL", "HTTP/1.1"),
                )
            except InvalidAnswer as exc:
                raise BadGateway(f"invalid answer: {exc}", upstream.label) from exc
            body = stream_body(
                response, upstream.label, reuse=not head.close, replayable=is_replayable(environ)
            )
            start_response(head.status, head.headers)
        except BaseException:
            response.close()
            response.release_conn()
            raise
        return body

    @staticmethod
    def _proto(environ: dict[str, Any], trusted: bool) -> str:
        """The scheme the client used: ours over TLS, a trusted proxy's X-Forwarded-Proto,
        else ours (docs/behaviour.md §2.5)."""
        scheme: str = environ.get("wsgi.url_scheme", "http")
        if trusted and scheme != "https":
            return str(environ.get("HTTP_X_FORWARDED_PROTO", scheme))
        return scheme

    def _resolve_holding(self, hostname: str, wake: bool) -> Upstream:
        """`resolve`, but with `-wakeHoldSeconds` a request that finds its application
        starting or asleep waits for it (up to that long) and is then forwarded, instead
        of answering 503 at once. The wait follows the routing table's changes, no polling.
        A request that may not wake the application (`wake` False) is never held: it
        would wait for a start it did not ask for.
        """
        try:
            return self.resolver.resolve(hostname, wake=wake)
        except RoutingError as exc:
            if not wake or self.wake_hold <= 0 or exc.status not in WAITING:
                raise
            first = exc
        deadline = time.monotonic() + self.wake_hold
        while (left := deadline - time.monotonic()) > 0:
            self.resolver.wait_for_change(left)
            try:
                return self.resolver.resolve(hostname)
            except RoutingError as exc:
                # After the wake-up write the instance reads "error" (stopped, expected
                # started, docs/behaviour.md §3.3) until its orchestrator starts it: wait then too.
                if exc.status not in WAITING and exc.status is not Status.ERROR:
                    raise
        raise first  # still not up: the wait page, which reloads itself

    def _send_upstream(
        self,
        environ: dict[str, Any],
        start_response: StartResponse,
        hostname: str,
        trusted: bool,
        wake: bool,
    ) -> Iterable[bytes]:
        """Send to an instance; when it fails in a way that is safe to replay (up to its
        first body block, before anything reaches the client), try the next.

        Each instance is tried at most once per request, so never more attempts than
        instances. A refused or broken connection also makes the resolver prefer the others
        for a while (passive ejection).
        """
        sent = time.perf_counter()
        tried: list[Upstream] = []
        failure: UpstreamError | None = None
        while True:
            try:
                if tried:
                    upstream = self.resolver.resolve(hostname, tried, wake)
                else:
                    upstream = self._resolve_holding(hostname, wake)
            except RoutingError:
                if failure is not None:
                    raise failure from None  # every instance failed: say how the last did
                raise
            if failure is not None and upstream in tried:
                raise failure  # a single upstream (a URL): nothing else to try
            if failure is not None:
                environ["gogeta.retries"] = len(tried)  # replayed on another instance
            # For the access log and the metrics (proxy.front): where it went.
            environ["gogeta.upstream"] = upstream
            try:
                response = self.forwarder.send(environ, upstream, self.url_header, trusted)
                environ["gogeta.upstream_seconds"] = time.perf_counter() - sent
                return self._begin(environ, start_response, upstream, response)
            except UpstreamError as exc:
                _note_failure(environ, upstream, exc)
                if exc.connect_failed or isinstance(exc, BadGateway):
                    self.resolver.failed(upstream)  # not for a slow answer: maybe one slow URL
                if not exc.replayable:
                    raise
                log.debug("%s: %s failed (%s), trying another", hostname, upstream.label, exc)
                tried.append(upstream)
                failure = exc

    def _static(
        self, environ: dict[str, Any], start_response: StartResponse, hostname: str, path: str
    ) -> Iterable[bytes]:
        found = self.static.find(path)
        if found is None or environ.get("REQUEST_METHOD") not in ("GET", "HEAD"):
            return self._send(start_response, self.pages.render("notfound", 404, hostname))
        start_response("200 OK", self.static.headers_of(found))
        if environ.get("REQUEST_METHOD") == "HEAD":
            return [b""]
        return self.static.blocks_of(found)

    @staticmethod
    def _send_and_stop_reading(
        environ: dict[str, Any], start_response: StartResponse, page: Page
    ) -> Iterator[bytes]:
        """Answer, then stop reading the client: the server would otherwise read and
        discard the rest of a body it refused, however large, before closing."""
        start_response(page.status, page.headers)
        yield page.body
        sock = environ.get("gogeta.socket") or environ.get("gunicorn.socket")
        if sock is not None:
            try:
                shutdown(sock, socket.SHUT_RD)
            except OSError:
                pass

    @staticmethod
    def _send(start_response: StartResponse, page: Page) -> Iterable[bytes]:
        start_response(page.status, page.headers)
        return [page.body]
