"""The etcd v2 source: directories mirrored by load and long poll, and gogeta's two writes.

The only module that talks to etcd's v2 API. Rules (docs/behaviour.md §5.4):
- load recursively (one GET whose JSON is walked here: python-etcd's `read` would build an
  object per node, which costs seconds and hundreds of MB at 100,000 domains), then watch
  from the answer's `X-Etcd-Index` + 1 and after each event from its `modifiedIndex` + 1,
  so nothing written between or during the two is lost;
- a watch that times out keeps its index; etcd's 401 "event index cleared" reloads;
- a watch silent for a while is probed with a cheap read and a short timeout: a frozen etcd
  holds long polls open forever, and only a question it does not answer tells it from an
  idle one;
- after an outage, resume only where etcd still holds the history we followed: its index
  not lower, its cluster id the same, and a key we saw still created at the same index (an
  etcd restarted empty with the same flags has the same cluster id); otherwise reload. So
  is a watch far behind, when one reload costs less than one long poll per event;
- when etcd fails, the last table keeps serving; reconnect with capped exponential
  backoff, trying each endpoint in turn; log each state change once, not each retry;
  an etcd that answers but cannot be used (credentials refused, v2 not served, TLS) says
  why, once.
python-etcd is untyped: its values stay inside this module.
"""

from __future__ import annotations

import json
import logging
import ssl
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar
from urllib.parse import urlsplit

import etcd
import urllib3

from resolvers.source import (
    Backoff,
    DirectoryWatcher,
    EndpointRing,
    EtcdAccess,
    Mirror,
    OnChange,
    Reachability,
    SourceDown,
    WatchedSource,
    WriteRefused,
    on_any_endpoint,
    uncollected,
)
from resolvers.tree import Node

log = logging.getLogger(__name__)
T = TypeVar("T")

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

WATCH_TIMEOUT = 55.0  # seconds a long poll may stay silent before we probe and re-open it
REQUEST_TIMEOUT = 10.0
PROBE_TIMEOUT = 5.0  # at most: a probe etcd does not answer in this long counts as an outage
# Never written: reading it (under the prefix, which a restricted user may read) answers
# etcd's current index.
PROBE_NAME = ".gogeta-index-probe"
# A watch far behind reloads only when following the events would take longer than this
# and than twice the last load: a big table (seconds to load) is never reloaded for a burst.
CATCH_UP_SECONDS = 0.1
POLL_SECONDS = 0.002  # first guess of one long poll per event (~1.3 ms measured here)

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
        envelope = json.loads(body, object_hook=node_of)
    except ValueError as exc:
        raise etcd.EtcdException(f"etcd answered a read with invalid JSON: {exc}") from exc
    if not isinstance(envelope, dict) or "node" not in envelope:
        raise etcd.EtcdException("etcd answered a read without a node")
    del body, envelope
    pop = found.pop
    while found:
        yield pop()


class Watcher(DirectoryWatcher[Endpoints]):
    """Mirrors one directory (`mirror.prefix`) of etcd into `mirror`, forever."""

    def __init__(
        self,
        endpoints: Endpoints,
        mirror: Mirror,
        on_change: OnChange = lambda event, detail: None,
        watch_timeout: float = WATCH_TIMEOUT,
        reachability: Reachability | None = None,
        probe_timeout: float = PROBE_TIMEOUT,
    ) -> None:
        super().__init__(endpoints, mirror, on_change, reachability)
        self.probe_key = f"{self.prefix}/{PROBE_NAME}"
        self.watch_timeout = watch_timeout  # the silence after which etcd is probed
        self.probe_timeout = probe_timeout
        self.index: int | None = None  # next waitIndex; None: (re)load first
        self.load_seconds = 0.0  # how long the last load took
        self._gap = 1.0  # index distance between our consecutive events (moving average)
        self._poll_seconds = POLL_SECONDS  # one long poll answered at once (moving average)
        # A key of the table and its createdIndex, which etcd keeps until the key is deleted
        # or re-`set`; another etcd at the same address has it at another index or not at all.
        self.witness: tuple[str, int] | None = None
        self.load_reason = "first load"  # why the next load happens

    @property
    def position(self) -> int | None:
        return self.index

    def problem_of(self, exc: BaseException) -> str | None:
        return problem_of(exc, self.endpoints.access)

    def run(self) -> None:
        backoff = Backoff()
        while True:
            try:
                reloaded = self.index is None
                if reloaded:
                    self.index = self._load()
                elif self.reachable is False and not self._holds_our_history():
                    self.index, reloaded = self._load(), True
                self._set_reachable(True, resumed=not reloaded)
                backoff.reset()
                self._watch_forever()
            except etcd.EtcdEventIndexCleared:
                log.info(
                    "%s: etcd no longer has events from index %s: reloading",
                    self.prefix,
                    self.index,
                )
                self.load_reason = f"etcd no longer had the events from index {self.index}"
                self.index = None
            except etcd.EtcdClusterIdChanged as exc:
                # A new etcd (a fresh data directory) at the address: its index says nothing
                # about our table, even when higher than the one we had.
                log.warning(
                    "%s: etcd's cluster id changed (%s), so its index says nothing of ours:"
                    " reloading",
                    self.prefix,
                    exc,
                )
                self.index = None
            except ETCD_DOWN as exc:
                self._retry_later(exc, backoff)

    def _watch_forever(self) -> None:
        """Apply etcd's events as they come; return when a reload is the faster way on."""
        client = self.endpoints.client()
        while True:
            assert self.index is not None
            asked = time.monotonic()
            try:
                result = client.read(
                    self.prefix,
                    recursive=True,
                    wait=True,
                    waitIndex=self.index,
                    timeout=self.watch_timeout,
                )
            except etcd.EtcdWatchTimedOut:
                # Idle, or frozen with our poll open: only a question etcd does not answer
                # tells (a failed probe raises, and counts as an outage).
                self._check_index(self.probe_timeout)
                continue  # the same index: a timeout must not advance it
            modified = int(result.modifiedIndex)
            gap = modified - self.index + 1
            self.index = modified + 1
            self.events_applied += 1
            answered_at_once = self.lag > 0  # etcd had this event already when asked
            # How far etcd was ahead of the event just received: events still to come.
            self.lag = max(0, int(result.etcd_index or 0) - modified)
            changed = self.mirror.apply(
                Node(result.key, result.value, bool(result.dir)), result.action
            )
            if changed:
                self.on_change("event", result.key)
            self._follow_witness(result)
            if self.lag and self._far_behind(gap, time.monotonic() - asked, answered_at_once):
                log.info(
                    "%s: behind etcd by %d events: reloading rather than following them",
                    self.prefix,
                    self.lag,
                )
                self.index = None
                return

    def _far_behind(self, gap: int, seconds: float, answered_at_once: bool) -> bool:
        """Whether following the `lag` events still to come costs more than a reload.

        `lag` counts every event in etcd, ours or not: the share that is ours is taken to be
        what the last events showed (their index gaps), and the time each takes what the
        last polls answered at once took.
        """
        self._gap = 0.7 * self._gap + 0.3 * max(1, gap)
        if answered_at_once:
            self._poll_seconds = 0.7 * self._poll_seconds + 0.3 * seconds
        following = self.lag / self._gap * self._poll_seconds
        return following > max(CATCH_UP_SECONDS, 2 * self.load_seconds)

    def _follow_witness(self, result: Any) -> None:
        written = result.action in ("set", "create", "update", "compareAndSwap")
        if written and not result.dir and result.ttl is None:
            if self.witness is None or self.witness[0] == result.key:
                self.witness = (result.key, int(result.createdIndex))  # `set` re-creates
        elif self.witness is not None and (
            self.witness[0] == result.key or self.witness[0].startswith(result.key + "/")
        ):
            self.witness = None  # deleted or expired: the next key written takes its place

    def _load(self) -> int:
        started = time.monotonic()
        client = self.endpoints.client()
        try:
            index, body = self._read_tree(client)
        except etcd.EtcdKeyNotFound as exc:
            index = index_of_miss(exc)
            self.mirror.load([])
            self.witness = None
        else:
            with uncollected():
                witness: list[tuple[str, int, int]] = []
                nodes = nodes_of(body, witness)
                del body  # the generator's reference is dropped once decoded
                self.mirror.load(nodes)
                self.witness = witness[0][:2] if witness else None
        self.last_load = (time.time(), f"{self.prefix}: {self.load_reason}")
        self.load_seconds = time.monotonic() - started
        self._gap, self.lag = 1.0, 0
        self._loaded(index)
        return index + 1

    def _read_tree(self, client: Any) -> tuple[int, bytes]:
        """(etcd index, JSON answer) of a recursive GET of the prefix.

        One request through python-etcd's `api_execute` (its connection pool, its error
        handling: `EtcdKeyNotFound` when the prefix does not exist).
        """
        response = client.api_execute(
            client.key_endpoint + self.prefix, client._MGET, params={"recursive": "true"}
        )
        try:
            header = response.headers.get("X-Etcd-Index")
            body: bytes = response.data
        finally:
            response.release_conn()
        try:
            return int(header), body
        except (ValueError, TypeError) as exc:
            raise etcd.EtcdException(f"etcd answered without a valid index: {exc}") from exc

    def _check_index(self, timeout: float) -> None:
        """A cheap read: raises when etcd does not answer; reloads if its index went back.

        Also where another etcd at the address shows first (its cluster id).
        """
        try:
            self.endpoints.client().read(self.probe_key, timeout=timeout)
            return  # someone wrote the probe key: cannot tell, keep watching
        except etcd.EtcdKeyNotFound as exc:
            current = index_of_miss(exc)
        if self.index is not None and current + 1 < self.index:
            log.warning("%s: etcd index went back to %s: reloading", self.prefix, current)
            self.load_reason = f"etcd's index went back to {current} (its data was lost)"
            self.index = self._load()

    def _holds_our_history(self) -> bool:
        """After an outage: whether etcd still holds what we followed, so we may resume."""
        client = self.endpoints.client()
        try:
            client.read(self.probe_key, timeout=self.probe_timeout)
            current = None  # someone wrote the probe key: cannot tell from it
        except etcd.EtcdKeyNotFound as exc:
            current = index_of_miss(exc)
        if current is not None and self.index is not None and current + 1 < self.index:
            log.warning("%s: etcd index went back to %s: reloading", self.prefix, current)
            return False
        if self.witness is None:
            return True
        key, created = self.witness
        try:
            same = int(client.read(key, timeout=self.probe_timeout).createdIndex) == created
        except etcd.EtcdKeyNotFound as exc:
            index_of_miss(exc)
            same = False
        if not same:
            log.warning(
                "%s: etcd no longer holds %s as created at index %s (a new etcd, or restored"
                " from a backup): reloading",
                self.prefix,
                key,
                created,
            )
        return same


class V2Source(WatchedSource[Watcher]):
    """etcd's v2 API (`/v2/keys`) as a `Source`: one watcher greenlet per directory."""

    name = "etcd v2"
    implicit_dirs = False

    def __init__(
        self,
        access: EtcdAccess,
        watch_timeout: float = WATCH_TIMEOUT,
        health_grace: float | None = None,
    ) -> None:
        super().__init__()
        self.access = access
        self.urls = list(access.urls)
        self.watch_timeout = watch_timeout
        self.probe_timeout = PROBE_TIMEOUT
        if health_grace is not None:
            # A frozen etcd is noticed within about half the grace (a silent watch probed),
            # so health turns 503 near when the grace says, not a whole long poll later.
            self.watch_timeout = min(watch_timeout, max(1.0, health_grace / 2))
            self.probe_timeout = min(PROBE_TIMEOUT, max(1.0, health_grace / 4))
        self.writes = Endpoints(self.urls, access=access)

    def watcher(self, mirror: Mirror, on_change: OnChange) -> Watcher:
        return Watcher(
            Endpoints(self.urls, access=self.access),
            mirror,
            on_change,
            watch_timeout=self.watch_timeout,
            reachability=self.reachability,
            probe_timeout=self.probe_timeout,
        )

    def touch(self, service_dir: str, service: str, index: str, stamp: str) -> None:
        base = f"{service_dir}/{service}/{index}"
        self._on_any_endpoint(lambda client: self._touch(client, service_dir, base, stamp))

    def wake(self, service_dir: str, service: str, index: str) -> bool:
        key = f"{service_dir}/{service}/{index}/status/expected"
        return self._on_any_endpoint(lambda client: self._wake(client, key))

    def _on_any_endpoint(self, write: Callable[[Any], T]) -> T:
        """One write (or read) with a client of the endpoint in use, the next on failure."""

        def once() -> T:
            try:
                try:
                    return write(self.writes.client())
                except etcd.EtcdClusterIdChanged:
                    # Another etcd answered (the watchers reload from it): the client knows
                    # its id now, and the write is for that etcd too.
                    return write(self.writes.client())
            except ETCD_REFUSED as exc:  # etcd answered: another endpoint would say the same
                raise WriteRefused(f"{type(exc).__name__}: {exc}") from exc
            except ETCD_DOWN as exc:
                raise SourceDown(str(exc)) from exc

        return on_any_endpoint(self.writes, once)

    def get(self, key: str) -> str | None:
        def read(client: Any) -> str | None:
            try:
                value = client.read(key).value
            except etcd.EtcdKeyNotFound:
                return None
            return None if value is None else str(value)

        return self._on_any_endpoint(read)

    def create(self, key: str, value: str, ttl: int | None = None) -> bool:
        def write(client: Any) -> bool:
            try:
                client.write(key, value, prevExist=False, ttl=ttl)
            except etcd.EtcdAlreadyExist:
                return False
            return True

        return self._on_any_endpoint(write)

    def put(self, key: str, value: str) -> None:
        self._on_any_endpoint(lambda client: client.write(key, value))

    def delete(self, key: str, value: str) -> bool:
        def remove(client: Any) -> bool:
            try:
                client.delete(key, prevValue=value)
            except (etcd.EtcdKeyNotFound, etcd.EtcdCompareFailed):
                return False
            return True

        return self._on_any_endpoint(remove)

    @staticmethod
    def _touch(client: Any, service_dir: str, base: str, stamp: str) -> None:
        key = f"{base}/lastAccess"
        try:
            client.write(key, stamp, prevExist=True)  # an update never creates directories
            return
        except etcd.EtcdKeyNotFound:
            pass  # the instance's first lastAccess, or the instance was deleted
        written = int(client.write(key, stamp).modifiedIndex)
        # etcd creates missing directories on a write: if this one created the instance's
        # (deleted since the request), remove what it created, or the deleted instance
        # would come back as a ghost without a location.
        path = base
        try:
            while path != service_dir and int(client.read(path).createdIndex) == written:
                if path == base:
                    client.delete(key, prevIndex=written)
                client.delete(path, dir=True)
                path = path.rpartition("/")[0]
        except (etcd.EtcdKeyNotFound, etcd.EtcdCompareFailed, etcd.EtcdDirNotEmpty):
            pass  # written to meanwhile: it exists again for real

    @staticmethod
    def _wake(client: Any, key: str) -> bool:
        try:
            client.write(key, "started", prevValue="passivated")
        except (etcd.EtcdCompareFailed, etcd.EtcdKeyNotFound):
            return False
        return True
