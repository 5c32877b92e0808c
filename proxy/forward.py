"""Forwarding one request to one upstream through urllib3, streaming both ways.

Reverse-proxy semantics (docs/behaviour.md §2.5, §2.6): method, path, query, headers and body pass
through, the client's Host included; hop-by-hop headers are dropped in both directions;
X-Forwarded-* are filled in. Nothing is read whole into memory: the request body is
handed to urllib3 as an iterator, the response body goes back as one. This module knows
nothing about routing; it is given an `Upstream`.
"""

from __future__ import annotations

import errno
import http.client
import logging
from collections.abc import Iterator
from typing import Any

import urllib3
from urllib3.exceptions import (
    ConnectTimeoutError,
    HTTPError,
    NewConnectionError,
    ProtocolError,
    ReadTimeoutError,
)
from urllib3.util import SKIP_HEADER

from framing.response import HOP_BY_HOP
from proxy.answer import Response
from proxy.connection import Pool
from proxy.errors import BadGateway, BadRequest, GatewayTimeout, PayloadTooLarge
from resolvers.base import Upstream

log = logging.getLogger(__name__)

BLOCK = 64 * 1024

# Hop-by-hop (RFC 9110 §7.6.1, and the Proxy-* family) are not forwarded. `Expect` is
# answered by our own server (100-continue), so the backend must not see it either.


def _is_hop_by_hop(lower_name: str) -> bool:
    return lower_name in HOP_BY_HOP or lower_name.startswith("proxy-")


_NO_TOKENS: frozenset[str] = frozenset()


# What a Connection header may never remove on the way to the backend: the client's Host
# (the backend's routing depends on it) and the framing gogeta writes itself.
_ALWAYS_SENT = frozenset({"host", "content-length", "content-type"})


def _connection_tokens(value: str) -> frozenset[str]:
    if not value:
        return _NO_TOKENS  # nearly always: no Connection header, nothing to build
    tokens = (t.strip(" \t").lower() for t in value.split(","))
    return frozenset(t for t in tokens if t) - _ALWAYS_SENT


_NAME_CACHE: dict[str, tuple[str, str]] = {}


def _header_name(environ_key: str) -> tuple[str, str]:
    """`HTTP_X_FORWARDED_FOR` → (`X-Forwarded-For`, `x-forwarded-for`), memoised."""
    names = _NAME_CACHE.get(environ_key)
    if names is None:
        name = environ_key[5:].replace("_", "-").title()
        names = (name, name.lower())
        if len(_NAME_CACHE) < 4096:  # a client inventing names must not grow it forever
            _NAME_CACHE[environ_key] = names
    return names


def host_without_port(host: str) -> str:
    if host.startswith("["):  # [::1]:8080
        end = host.find("]")
        return host[: end + 1] if end > 0 else host
    return host.partition(":")[0]


def public_base_url(proto: str, host: str, port: str) -> str:
    """docs/behaviour.md §2.6: `{proto}://{host}/`, and `:{port}` unless it is the default."""
    default = (proto == "https" and port == "443") or (proto == "http" and port == "80")
    host = host_without_port(host)
    return f"{proto}://{host}/" if default or not port else f"{proto}://{host}:{port}/"


def request_headers(
    environ: dict[str, Any], url_header: str = "", trusted: bool = False
) -> dict[str, str]:
    """The headers to send upstream, built in one pass over the WSGI environ.

    `trusted`: the peer is one of `-trustedProxies`, so its X-Forwarded-* are believed.
    """
    headers: dict[str, str] = {}
    dropped = _connection_tokens(environ.get("HTTP_CONNECTION", ""))
    url_header_lower = url_header.lower()
    for key, value in environ.items():
        if not key.startswith("HTTP_"):
            continue
        name, lower = _header_name(key)
        if _is_hop_by_hop(lower) or lower in dropped or lower == "expect":
            continue
        if url_header and lower == url_header_lower:
            continue  # replaced below, never taken from the client (docs/behaviour.md §2.6)
        headers[name] = value
    content_type = environ.get("CONTENT_TYPE")
    if content_type:
        headers["Content-Type"] = content_type
    content_length = environ.get("CONTENT_LENGTH")
    if content_length and not _is_chunked(environ):
        headers["Content-Length"] = content_length

    remote = environ.get("REMOTE_ADDR", "")
    scheme = environ.get("wsgi.url_scheme", "http")
    host = environ.get("HTTP_HOST", "")
    own_port = str(environ.get("SERVER_PORT", ""))
    if trusted:  # a proxy of ours: what it says it saw, then where it came from
        forwarded_for = headers.get("X-Forwarded-For")
        headers["X-Forwarded-For"] = f"{forwarded_for}, {remote}" if forwarded_for else remote
        headers.setdefault("X-Forwarded-Host", host)
        if scheme == "https":  # over gogeta's own TLS: TLS ended here (docs/behaviour.md §9)
            headers["X-Forwarded-Proto"] = proto = scheme
            headers["X-Forwarded-Port"] = port = own_port
        else:
            proto = headers.setdefault("X-Forwarded-Proto", scheme)
            port = headers.setdefault("X-Forwarded-Port", own_port)
    else:  # anyone else: only what gogeta saw itself, whatever the client claimed
        headers["X-Forwarded-For"] = remote
        headers["X-Forwarded-Proto"] = proto = scheme
        headers["X-Forwarded-Host"] = host
        headers["X-Forwarded-Port"] = port = own_port
    if url_header:
        headers[url_header] = public_base_url(proto, host, port)
    return headers


def _is_chunked(environ: dict[str, Any]) -> bool:
    return "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower()


class ClientBody:
    """The client's body as an iterator of blocks, remembering how reading it failed.

    A client that sends a malformed chunk or goes away mid-upload is the client's fault,
    not the backend's: `error` lets the forwarder answer 400 instead of 502, and the
    half-sent backend connection is dropped rather than reused.
    """

    def __init__(self, stream: Any, expected: int | None, limit: int = 0) -> None:
        self.stream = stream
        self.expected = expected
        self.limit = limit  # bytes; 0: none
        self.received = 0
        self.error: BaseException | None = None

    def __iter__(self) -> Iterator[bytes]:
        while True:
            try:
                block = self.stream.read(BLOCK)
            except (OSError, ValueError) as exc:  # pywsgi's invalid-input error is an OSError
                self.error = exc
                raise
            if not block:
                if self.expected is not None and self.received < self.expected:
                    self.error = EOFError(f"body ended after {self.received} bytes")
                    raise self.error
                return
            self.received += len(block)
            if self.limit and self.received > self.limit:
                self.error = PayloadTooLarge(f"body over {self.limit} bytes")
                raise self.error
            yield block


def request_body(environ: dict[str, Any], limit: int = 0) -> ClientBody | None:
    """The client's body as an iterable of blocks, or None when there is none.

    `limit` (bytes, 0 for none): a declared length over it is refused before anything is
    sent upstream; a chunked body is cut when it goes over.
    """
    if _is_chunked(environ):
        return ClientBody(environ["wsgi.input"], None, limit)
    length = environ.get("CONTENT_LENGTH")
    if not length or length.strip() == "0":
        return None
    if limit and int(length) > limit:
        raise PayloadTooLarge(f"Content-Length {length} over {limit} bytes")
    return ClientBody(environ["wsgi.input"], int(length), limit)


def target_of(environ: dict[str, Any], upstream: Upstream) -> str:
    """The request target to send upstream: the raw path, joined to the upstream's own."""
    raw = environ.get("RAW_URI") or environ.get("REQUEST_URI")
    if raw == "*":  # OPTIONS * (asterisk-form): about the server, no path to join
        return "*"
    if raw and raw.startswith("/"):
        path, _, query = raw.partition("?")
    else:
        from urllib.parse import quote

        path = quote(environ.get("PATH_INFO", "/") or "/", safe="/;=,:@!$&'()*+~")
        query = environ.get("QUERY_STRING", "")
    if upstream.path:
        path = upstream.path + path  # upstream.path has no trailing '/', path starts with one
    if upstream.query:
        query = f"{upstream.query}&{query}" if query else upstream.query
    return f"{path}?{query}" if query else path


class Forwarder:
    """Holds the one urllib3 PoolManager and sends requests through it."""

    def __init__(
        self,
        connect_timeout: float,
        read_timeout: float,
        max_body: int = 0,
        pool_size: int = 64,
    ) -> None:
        self.connect_timeout, self.read_timeout = connect_timeout, read_timeout
        self.max_body = max_body  # bytes a request body may have; 0: no limit (-maxBodySize)
        self.timeout = urllib3.Timeout(connect=connect_timeout, read=read_timeout)
        # What `retries=False, redirect=False` become inside urlopen, built once: errors
        # come back as they are (the retry policy is ours, in proxy.app).
        self.no_retries = urllib3.Retry(total=False, redirect=False)
        # Keep-alive to every backend; a pool per backend host, sized for the concurrency
        # (too small a pool reconnects constantly). block=False: beyond the size, extra
        # connections are opened and closed rather than making requests wait.
        self.pools = urllib3.PoolManager(
            num_pools=1024, maxsize=pool_size, block=False, timeout=self.timeout, retries=False
        )
        self.pools.pool_classes_by_scheme = {"http": Pool, "https": urllib3.HTTPSConnectionPool}
        # The manager's lookup builds a normalised key per call; ours is one dict access.
        self._pool_of: dict[tuple[str, str, int], urllib3.HTTPConnectionPool] = {}

    def close(self) -> None:
        self._pool_of.clear()
        self.pools.clear()

    def _pool(self, upstream: Upstream) -> urllib3.HTTPConnectionPool:
        key = (upstream.scheme, upstream.host, upstream.port)
        pool = self._pool_of.get(key)
        if pool is None or pool.pool is None:  # new, or evicted and closed by the manager
            pool = self.pools.connection_from_host(upstream.host, upstream.port, upstream.scheme)
            if len(self._pool_of) >= 4096:
                self._pool_of.clear()
            self._pool_of[key] = pool
        return pool

    def send(
        self,
        environ: dict[str, Any],
        upstream: Upstream,
        url_header: str = "",
        trusted: bool = False,
    ) -> Response:
        """Send the request upstream and return the response with its body unread.

        Raises BadGateway or GatewayTimeout; the caller must finish with `stream_body`.
        """
        pool = self._pool(upstream)
        method = environ["REQUEST_METHOD"]
        body = request_body(environ, self.max_body)
        headers = request_headers(environ, url_header, trusted)
        # Without these, urllib3 and http.client would add their own (`User-Agent:
        # python-urllib3/…`, `Accept-Encoding: identity`): the backend must see the client's.
        # urllib3's marker for "send none", so only on this path (proxy.tunnel writes its
        # handshake itself and would send the marker as text).
        if "User-Agent" not in headers:
            headers["User-Agent"] = SKIP_HEADER
        if "Accept-Encoding" not in headers:
            headers["Accept-Encoding"] = SKIP_HEADER
        target = target_of(environ, upstream)
        # Without a body and with an idempotent method, sending twice is harmless: a pooled
        # keep-alive connection the backend closed while idle is retried once on a fresh
        # one (instead of a 502), and a failure may be replayed on another instance.
        replayable = is_replayable(environ)
        attempts = 2 if replayable else 1
        for attempt in range(1, attempts + 1):
            try:
                if body is None and type(pool) is Pool:
                    return pool.exchange(method, target, headers, self.timeout)
                return pool.urlopen(
                    method,
                    target,
                    body=body,
                    headers=headers,
                    retries=self.no_retries,
                    redirect=False,
                    assert_same_host=False,
                    preload_content=False,
                    decode_content=False,
                    timeout=self.timeout,
                )
            except (HTTPError, OSError) as exc:
                if body is not None and body.error is not None:
                    if isinstance(body.error, PayloadTooLarge):
                        raise body.error from exc
                    raise BadRequest(f"request body: {body.error}") from exc
                self._raise_upstream_error(exc, upstream, replayable, attempt < attempts)
                continue  # a stale keep-alive connection: once more on a fresh one
        raise AssertionError("not reached: the last attempt returns or raises")

    @staticmethod
    def _raise_upstream_error(
        exc: BaseException, upstream: Upstream, replayable: bool, may_retry: bool
    ) -> None:
        """Raise the UpstreamError for `exc`; return when a fresh connection may be tried."""
        label = upstream.label
        if isinstance(exc, NewConnectionError):  # first: it subclasses ConnectTimeoutError
            raise BadGateway(f"cannot connect: {exc}", label, connect_failed=True) from exc
        if isinstance(exc, ConnectTimeoutError):
            raise GatewayTimeout(f"connect timed out: {exc}", label, connect_failed=True) from exc
        if isinstance(exc, ReadTimeoutError):
            raise GatewayTimeout(f"timed out: {exc}", label) from exc
        if isinstance(exc, ProtocolError) and may_retry and _is_disconnect(exc):
            return
        raise BadGateway(f"failed: {exc}", label, replayable=replayable) from exc


IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})


def is_replayable(environ: dict[str, Any]) -> bool:
    """Whether sending the request twice is harmless: an idempotent method and no body
    (docs/behaviour.md §4.3)."""
    return environ["REQUEST_METHOD"] in IDEMPOTENT and request_body(environ) is None


def _is_disconnect(exc: ProtocolError) -> bool:
    """The peer closed or reset the connection before answering (a stale keep-alive)."""
    return any(
        isinstance(arg, (ConnectionResetError, BrokenPipeError, http.client.RemoteDisconnected))
        for arg in exc.args
    )


def stream_body(
    response: Response, label: str, reuse: bool = True, replayable: bool = False
) -> Iterator[bytes]:
    """The backend's body as it comes, its first block already read.

    Reading the first block before the answer starts means a backend that fails before
    sending any of its body still gets a 502 or 504 page: nothing was sent to the client yet,
    so a `replayable` request (`is_replayable`) may still go to another instance, unless the
    backend was only slow. On error here the caller must close and release the response.
    `reuse=False`: the backend connection is closed after the body instead of going back
    to the pool.
    """
    blocks = _blocks(response)
    try:
        first = next(blocks, b"")
    except ReadTimeoutError as exc:
        raise GatewayTimeout(f"timed out before the body: {exc}", label) from exc
    except (HTTPError, OSError) as exc:
        raise BadGateway(f"failed before the body: {exc}", label, replayable=replayable) from exc
    return _relay(response, label, first, blocks, reuse)


def _blocks(response: Response) -> Iterator[bytes]:
    """Blocks of the body as soon as they arrive, never waiting to fill a whole BLOCK.

    `stream()` does for chunked bodies, but on a Content-Length or close-delimited one it
    waits for BLOCK bytes: a backend sending a little at a time (progress output, events)
    would reach the client late. `read1` returns what one read from the socket brings.
    """
    if response.chunked:
        yield from response.stream(BLOCK, decode_content=False)
        return
    while block := response.read1(BLOCK, decode_content=False):
        yield block


def _relay(
    response: Response,
    label: str,
    first: bytes,
    blocks: Iterator[bytes],
    reuse: bool,
) -> Iterator[bytes]:
    """Yield the body; always give the connection back.

    A backend that fails mid-body cannot change a status already sent: the client
    connection is cut (a connection-reset error, which our server closes quietly) so the
    client sees a truncated response instead of a complete-looking one.
    """
    complete = False
    try:
        if first:
            yield first
        yield from blocks
        complete = True
    except (HTTPError, OSError) as exc:
        log.warning("upstream %s failed mid-body: %s", label, exc)
        raise ConnectionResetError(errno.ECONNRESET, "upstream failed mid-body") from exc
    finally:
        if not complete or not reuse:
            response.close()  # unread data, or framing not to be trusted: not reused
        response.release_conn()
