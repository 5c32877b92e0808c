"""etcd's v2 API as python-etcd reaches it: endpoints, their clients, what an answer means.

Knows nothing of what is watched or written, nor of the table (docs/behaviour.md §5.4):
- the endpoints of `-etcdAddress`, one at a time, the next one on failure, each through a
  python-etcd client of its own that remembers the cluster id it has seen;
- a recursive GET read as it comes, with turns, and its JSON walked here (python-etcd's
  `read` would build an object per node, which costs seconds and hundreds of MB at 100,000
  domains);
- python-etcd's errors sorted: etcd refused (no backoff, not an outage) or did not answer;
  and when it answers but cannot be used (credentials refused, v2 not served, TLS), why.
python-etcd is untyped: its values stay inside resolvers/etcd2*.py.
"""

from __future__ import annotations

import http.client
import json
import logging
import ssl
import sys
from collections.abc import Iterator, Sequence
from typing import Any
from urllib.parse import urlsplit

import etcd
import gevent
import urllib3

from resolvers.endpoints import EndpointRing
from resolvers.nodes import Node, Pause, no_pause
from resolvers.source import EtcdAccess

log = logging.getLogger(__name__)

# python-etcd swaps pyOpenSSL in under every urllib3 connection of the process whenever it
# can import it (the ACME library depends on it): undone, so the standard `ssl` module (and
# its error reasons, `tls_failure` below) stays in charge of etcd's and backends' TLS.
try:
    from urllib3.contrib import pyopenssl
except ImportError:  # pragma: no cover - pyOpenSSL not installed
    pass
else:
    pyopenssl.extract_from_urllib3()

# python-etcd logs every failed request at ERROR; we log state changes ourselves.
logging.getLogger("etcd.client").setLevel(logging.CRITICAL)

_ETCD_HOSTS: set[str] = set()  # hosts of every etcd endpoint this process talks to


class _RetriesAtDebug(logging.Filter):
    """urllib3's "Retrying (...)" lines for etcd's hosts, turned into DEBUG lines.

    python-etcd's client keeps urllib3's default of 3 retries per request, each logged at
    WARNING: an outage would log dozens of them while `Reachability` logs one line. The
    forwarder never retries through urllib3, so the lines it would log are left alone.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        retry = getattr(record, "__urllib3-retry-warning", None)
        if not isinstance(retry, dict) or retry.get("host") not in _ETCD_HOSTS:
            return True
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return log.isEnabledFor(logging.DEBUG)


logging.getLogger("urllib3.connectionpool").addFilter(_RetriesAtDebug())

REQUEST_TIMEOUT = 10.0
DECODED_HERE = 1 << 20  # bytes: a larger answer to a load is decoded in another thread
READ_BYTES = 1 << 16  # a load's answer is read this much at a time, with its pause between
# While it decodes, the interpreter hands the GIL over this often instead of every 5 ms:
# each socket call of a request lets the decoder in, and waiting 5 ms to get it back made
# a request ~10 ms long throughout a 100,000-domain reload.
DECODE_SWITCH_SECONDS = 0.0005


class _ShortGilTurns:
    """The short switch interval, for as long as any decode runs in another thread."""

    def __init__(self) -> None:
        self.running = 0
        self.before = 0.0

    def __enter__(self) -> None:
        if not self.running:
            self.before = sys.getswitchinterval()
            sys.setswitchinterval(DECODE_SWITCH_SECONDS)
        self.running += 1

    def __exit__(self, *exc: object) -> None:
        self.running -= 1
        if not self.running:
            sys.setswitchinterval(self.before)


_short_gil_turns = _ShortGilTurns()


# etcd answered, and said no: a key in the way, a failed compare, missing permissions.
# Not an outage (no backoff, no "unreachable"), whatever python-etcd's class tree says.
ETCD_REFUSED = (etcd.EtcdKeyError, etcd.EtcdValueError, etcd.EtcdInsufficientPermissions)
ETCD_DOWN = (
    etcd.EtcdConnectionFailed,
    etcd.EtcdClusterIdChanged,
    etcd.EtcdException,
    urllib3.exceptions.HTTPError,
    OSError,
)


class V2NotServed(etcd.EtcdException):  # type: ignore[misc]
    """etcd answered a v2 path with a plain 404: its v2 API is off (or gone, etcd >= 3.6)."""


def index_of_miss(exc: Any) -> int:
    """etcd's index in a "key not found" answer, which a v2-less etcd's 404 does not have."""
    payload = exc.payload if isinstance(getattr(exc, "payload", None), dict) else {}
    if "errorCode" not in payload or "index" not in payload:
        raise V2NotServed(f"not a v2 answer: {payload.get('cause', '')}".strip()) from exc
    return int(payload["index"])


def v2_not_served(exc: BaseException) -> bool:
    """Whether `exc` is etcd answering a v2 path with its router's plain-text 404."""
    if isinstance(exc, V2NotServed):
        return True
    payload = getattr(exc, "payload", None)
    # python-etcd's own payload for an answer that is not JSON: the text is in "cause".
    return (
        isinstance(payload, dict)
        and "errorCode" not in payload
        and str(payload.get("cause", "")).startswith("404 page not found")
    )


def tls_failure(exc: BaseException) -> str | None:
    """The TLS reason in a python-etcd connection failure (through urllib3's wrappers)."""
    cause: Any = getattr(exc, "cause", None)
    for _ in range(4):
        if isinstance(cause, ssl.SSLError):
            return str(cause.reason or cause)
        if isinstance(cause, urllib3.exceptions.MaxRetryError):
            cause = cause.reason
        elif isinstance(cause, urllib3.exceptions.SSLError) and cause.args:
            cause = cause.args[0]
            if not isinstance(cause, BaseException):
                return str(cause)
        else:
            return None
    return None


def problem_of(exc: BaseException, access: EtcdAccess) -> str | None:
    """Why etcd cannot be used although it answers, in words for a log line and health."""
    if v2_not_served(exc):
        return (
            "etcd does not serve the v2 API (etcd 3.6 and later, or started without"
            " --enable-v2): run gogeta with -etcdApi v3"
        )
    if isinstance(exc, etcd.EtcdInsufficientPermissions):
        if not access.username:
            return (
                "etcd refused gogeta's credentials (none given, and etcd has auth on):"
                " set -etcdUsername and -etcdPassword"
            )
        return (
            f"etcd refused gogeta's credentials (user {access.username!r}, or its permissions"
            " on the watched directories): check -etcdUsername and -etcdPassword"
        )
    reason = tls_failure(exc)
    if reason is not None:
        return f"TLS with etcd failed ({reason}): check -etcdCaFile, -etcdCertFile and -etcdKeyFile"
    return None


class Endpoints(EndpointRing):
    """The etcd endpoints of `-etcdAddress`, each through a python-etcd client of its own."""

    def __init__(
        self,
        urls: Sequence[str],
        read_timeout: float = REQUEST_TIMEOUT,
        access: EtcdAccess | None = None,
    ) -> None:
        super().__init__(urls)
        self.access = access or EtcdAccess(tuple(self.urls))
        _ETCD_HOSTS.update(urlsplit(url).hostname or "" for url in self.urls)
        self.read_timeout = read_timeout
        self._client: Any = None
        # The X-Etcd-Cluster-Id last seen, kept across clients: python-etcd raises
        # EtcdClusterIdChanged once when an answer carries another one.
        self.cluster_id: str | None = None

    def client(self) -> Any:
        if self._client is None:
            parts = urlsplit(self.current)
            scheme = parts.scheme or "http"
            port = parts.port or (443 if scheme == "https" else 80)
            access = self.access
            self._client = etcd.Client(
                host=parts.hostname,
                port=port,
                protocol=scheme,
                read_timeout=self.read_timeout,
                allow_reconnect=False,
                cert=(access.cert_file, access.key_file) if access.cert_file else None,
                ca_cert=access.ca_file or None,
                username=access.username or None,
                password=access.password or None,
                expected_cluster_id=self.cluster_id,
            )
        return self._client

    def rotate(self) -> None:
        """Give up on the current endpoint; the next call to `client` uses the next one."""
        if self._client is not None:
            self.cluster_id = self._client.expected_cluster_id or self.cluster_id
        self._client = None
        super().rotate()


def read_tree(client: Any, prefix: str, pause: Pause = no_pause) -> tuple[int, bytes]:
    """(etcd index, JSON answer) of a recursive GET of `prefix`.

    Asked as python-etcd's `api_execute` asks (its request, its cluster-id check, its
    errors: `EtcdKeyNotFound` when the prefix does not exist), but the answer is read as
    it comes, `pause` called after each part: at 100,000 domains it is 44 MB, which the
    socket always has ready, and read whole (as `api_execute` does) it held the loop ~20 ms.
    """
    ask = etcd.Client.api_execute.__wrapped__  # the request alone: its answer not read
    try:
        response = ask(
            client,
            client.key_endpoint + prefix,
            client._MGET,
            params={"recursive": "true"},
            timeout=client.read_timeout or None,
        )
        whole = False
        try:
            client._check_cluster_id(response)
            if response.status not in (200, 201):
                client._handle_server_response(response)  # raises etcd's error
            parts = []
            for part in response.stream(READ_BYTES):
                parts.append(part)
                pause()
            body = b"".join(parts)
            header = response.headers.get("X-Etcd-Index")
            whole = True
        finally:
            if not whole:
                # The rest of an answer may still be on its way, where the pool's liveness
                # check cannot see it: the connection is never to be reused.
                response.close()
            response.release_conn()
    except (urllib3.exceptions.HTTPError, http.client.HTTPException, OSError) as exc:
        # What python-etcd makes of them (with reconnection off, as our clients have it).
        message = f"Connection to etcd failed due to {exc!r}"
        raise etcd.EtcdConnectionFailed(message, cause=exc) from exc
    try:
        return int(header), body
    except (ValueError, TypeError) as exc:
        raise etcd.EtcdException(f"etcd answered without a valid index: {exc}") from exc


def nodes_of(body: bytes, witness: list[tuple[str, int, int]] | None = None) -> Iterator[Node]:
    """The nodes of a recursive GET's JSON answer, each parent before its children.

    Each node becomes a `Node` as soon as the decoder has read it (children first), so
    the decoded answer never exists as a tree of dicts (about three times the memory);
    the list is then consumed from its end, parents first, and shrinks as the mirror fills.
    The key (not directory, without TTL) modified longest ago goes into `witness`, as
    (key, createdIndex, modifiedIndex): the one most likely unchanged after an outage.
    """
    found: list[Node] = []
    append = found.append

    def node_of(obj: dict[str, Any]) -> Any:
        if "action" in obj:
            return obj  # the envelope: {"action": "get", "node": ...}
        is_dir = bool(obj.get("dir"))
        if witness is not None and not is_dir and "ttl" not in obj:
            modified = int(obj.get("modifiedIndex", 0))
            if not witness or modified < witness[0][2]:
                witness[:] = [(obj.get("key", ""), int(obj.get("createdIndex", 0)), modified)]
        append(Node(obj.get("key", ""), obj.get("value"), is_dir))
        return None  # in its parent's "nodes", in place of the dict

    try:
        if len(body) < DECODED_HERE:
            envelope = json.loads(body, object_hook=node_of)
        else:  # a second a 40 MB answer: the loop's thread runs between its GIL slices
            threads = gevent.get_hub().threadpool
            with _short_gil_turns:
                envelope = threads.apply(json.loads, (body,), {"object_hook": node_of})
    except ValueError as exc:
        raise etcd.EtcdException(f"etcd answered a read with invalid JSON: {exc}") from exc
    if not isinstance(envelope, dict) or "node" not in envelope:
        raise etcd.EtcdException("etcd answered a read without a node")
    del body, envelope
    pop = found.pop
    while found:
        yield pop()
