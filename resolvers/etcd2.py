"""The etcd v2 source: directories mirrored by load and long poll, and gogeta's two writes.

The only module that talks to etcd's v2 API. Rules (docs/behaviour.md §5.4):
- load recursively (one GET whose JSON is walked here: python-etcd's `read` would build an
  object per node, which costs seconds and hundreds of MB at 100,000 domains), then watch
  from the answer's `X-Etcd-Index` + 1 and after each event from its `modifiedIndex` + 1,
  so nothing written between or during the two is lost;
- a watch that times out keeps its index; etcd's 401 "event index cleared" reloads;
- when etcd fails, the last table keeps serving; reconnect with capped exponential
  backoff, trying each endpoint in turn; log each state change once, not each retry.
python-etcd is untyped: its values stay inside this module.
"""

from __future__ import annotations

import gc
import json
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar
from urllib.parse import urlsplit

import etcd
import gevent
import urllib3

from resolvers.source import (
    Background,
    Backoff,
    EtcdAccess,
    Mirror,
    Reachability,
    SourceDown,
    SyncState,
    WriteRefused,
)
from resolvers.tree import Node

log = logging.getLogger(__name__)
T = TypeVar("T")

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

WATCH_TIMEOUT = 55.0  # seconds a long poll may stay silent before we re-open it
REQUEST_TIMEOUT = 10.0
PROBE_KEY = "/.gogeta-index-probe"  # never written: reading it returns etcd's current index

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


class Endpoints:
    """The etcd endpoints of `-etcdAddress`, used one at a time, in turn on failure."""

    def __init__(
        self,
        urls: Sequence[str],
        read_timeout: float = REQUEST_TIMEOUT,
        access: EtcdAccess | None = None,
    ) -> None:
        self.urls = list(urls)
        self.access = access or EtcdAccess(tuple(self.urls))
        _ETCD_HOSTS.update(urlsplit(url).hostname or "" for url in self.urls)
        self.read_timeout = read_timeout
        self._position = 0
        self._client: Any = None

    @property
    def current(self) -> str:
        return self.urls[self._position]

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
            )
        return self._client

    def rotate(self) -> None:
        """Give up on the current endpoint; the next call to `client` uses the next one."""
        self._client = None
        self._position = (self._position + 1) % len(self.urls)


def nodes_of(body: bytes) -> Iterator[Node]:
    """The nodes of a recursive GET's JSON answer, each parent before its children.

    Each node becomes a `Node` as soon as the decoder has read it (children first), so
    the decoded answer never exists as a tree of dicts (about three times the memory);
    the list is then consumed from its end, parents first, and shrinks as the mirror fills.
    """
    found: list[Node] = []
    append = found.append

    def node_of(obj: dict[str, Any]) -> Any:
        if "action" in obj:
            return obj  # the envelope: {"action": "get", "node": ...}
        append(Node(obj.get("key", ""), obj.get("value"), bool(obj.get("dir"))))
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


class Watcher(Background):
    """Mirrors one directory (`mirror.prefix`) of etcd into `mirror`, forever."""

    def __init__(
        self,
        endpoints: Endpoints,
        mirror: Mirror,
        on_change: Callable[[str, Any], None] = lambda event, detail: None,
        watch_timeout: float = WATCH_TIMEOUT,
        reachability: Reachability | None = None,
    ) -> None:
        self.reachability = reachability or Reachability()
        self.endpoints = endpoints
        self.mirror = mirror
        self.prefix = mirror.prefix
        self.on_change = on_change
        self.watch_timeout = watch_timeout
        self.index: int | None = None  # next waitIndex; None: (re)load first
        self.loaded = False
        self.reachable: bool | None = None
        self.unreachable_since: float | None = None
        self.last_error: str | None = None
        self.events_applied = 0
        self.lag = 0
        self.reloads = 0
        self.load_reason = "first load"  # why the next load happens
        self.last_load: tuple[float, str] | None = None  # (epoch seconds, reason)

    def run(self) -> None:
        backoff = Backoff()
        while True:
            try:
                if self.index is None:
                    self.index = self._load()
                elif self.reachable is False:
                    self._check_index()
                self._set_reachable(True)
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
            except ETCD_DOWN as exc:
                self._set_reachable(False, exc)
                if len(self.endpoints.urls) > 1:
                    self.endpoints.rotate()
                gevent.sleep(backoff.next())

    def _watch_forever(self) -> None:
        client = self.endpoints.client()
        while True:
            try:
                result = client.read(
                    self.prefix,
                    recursive=True,
                    wait=True,
                    waitIndex=self.index,
                    timeout=self.watch_timeout,
                )
            except etcd.EtcdWatchTimedOut:
                continue  # nothing happened: same index (a timeout must not advance it)
            self.index = int(result.modifiedIndex) + 1
            self.events_applied += 1
            # How far etcd was ahead of the event just received: events still to come.
            self.lag = max(0, int(result.etcd_index or 0) - int(result.modifiedIndex))
            changed = self.mirror.apply(
                Node(result.key, result.value, bool(result.dir)), result.action
            )
            if changed:
                self.on_change("event", result.key)

    def _load(self) -> int:
        client = self.endpoints.client()
        try:
            index, body = self._read_tree(client)
        except etcd.EtcdKeyNotFound as exc:
            self.mirror.load([])
            index = int(exc.payload["index"])
        else:
            # Decoding and building the table make a million objects at 100,000 domains,
            # without blocking (no other greenlet runs meanwhile): the cyclic collector,
            # which would walk everything alive again and again, waits until the end.
            # The table has no reference cycles (reference counting frees the old one), so
            # it is then frozen out of the collector's sight: a full collection under
            # traffic no longer walks it.
            collecting = gc.isenabled()
            gc.disable()
            try:
                nodes = nodes_of(body)
                del body  # the generator's reference is dropped once decoded
                self.mirror.load(nodes)
            finally:
                if collecting:
                    gc.enable()
            gc.freeze()
        self.reloads += 1
        self.last_load = (time.time(), f"{self.prefix}: {self.load_reason}")
        self.loaded = True
        log.info("%s: loaded at etcd index %s", self.prefix, index)
        self.on_change("load", index)
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

    def _check_index(self) -> None:
        """After an outage: if etcd's index went backwards (data lost), reload."""
        try:
            self.endpoints.client().read(PROBE_KEY)
            return  # someone wrote the probe key: cannot tell, keep watching
        except etcd.EtcdKeyNotFound as exc:
            current = int(exc.payload["index"])
        if self.index is not None and current + 1 < self.index:
            log.warning("%s: etcd index went back to %s: reloading", self.prefix, current)
            self.load_reason = f"etcd's index went back to {current} (its data was lost)"
            self.index = self._load()

    def _set_reachable(self, reachable: bool, exc: BaseException | None = None) -> None:
        if reachable:
            if self.reachable is False:
                log.info("%s: resuming from index %s", self.prefix, self.index)
                self.reachability.answered(self.prefix, self.endpoints.current)
            self.reachable = True
            self.unreachable_since = None
            return
        self.last_error = f"{self.endpoints.current}: {exc}"
        if self.reachable is not False:
            assert exc is not None
            self.reachability.failed(self.prefix, self.endpoints.current, exc)
            self.unreachable_since = time.time()
        self.reachable = False


class V2Source:
    """etcd's v2 API (`/v2/keys`) as a `Source`: one watcher greenlet per directory."""

    name = "etcd v2"

    def __init__(self, access: EtcdAccess, watch_timeout: float = WATCH_TIMEOUT) -> None:
        self.access = access
        self.urls = list(access.urls)
        self.watch_timeout = watch_timeout
        self.watchers: list[Watcher] = []
        self.reachability = Reachability()  # one line per outage, however many watchers see it
        self.writes = Endpoints(self.urls, access=access)

    def mirror(self, mirror: Mirror, on_change: Callable[[str, Any], None]) -> None:
        self.watchers.append(
            Watcher(
                Endpoints(self.urls, access=self.access),
                mirror,
                on_change,
                watch_timeout=self.watch_timeout,
                reachability=self.reachability,
            )
        )

    def start(self) -> None:
        for watcher in self.watchers:
            watcher.start()

    def stop(self) -> None:
        for watcher in self.watchers:
            watcher.stop()

    def state(self) -> SyncState:
        watchers = self.watchers
        unreachable = [w.unreachable_since for w in watchers if w.unreachable_since]
        errors = [w.last_error for w in watchers if w.last_error]
        loads = [w.last_load for w in watchers if w.last_load]
        last_load = max(loads) if loads else None
        return SyncState(
            loaded=all(w.loaded for w in watchers),
            index=min((w.index or 1) - 1 for w in watchers) if watchers else None,
            unreachable_since=min(unreachable) if unreachable else None,
            last_error=errors[-1] if errors else None,
            events_applied=sum(w.events_applied for w in watchers),
            reloads=sum(w.reloads for w in watchers),
            lag=max((w.lag for w in watchers), default=0),
            endpoint=watchers[0].endpoints.current if watchers else None,
            last_load=last_load[0] if last_load else None,
            last_load_reason=last_load[1] if last_load else None,
        )

    def touch(self, service_dir: str, service: str, index: str, stamp: str) -> None:
        base = f"{service_dir}/{service}/{index}"
        self._on_any_endpoint(lambda client: self._touch(client, service_dir, base, stamp))

    def wake(self, service_dir: str, service: str, index: str) -> bool:
        key = f"{service_dir}/{service}/{index}/status/expected"
        return self._on_any_endpoint(lambda client: self._wake(client, key))

    def _on_any_endpoint(self, write: Callable[[Any], T]) -> T:
        """One write, tried on each endpoint in turn until one answers.

        Dropped at the first failure, a write behind a dead first endpoint would be lost
        (and a lastAccess not asked again for a whole interval).
        """
        for attempt in range(len(self.writes.urls)):
            try:
                return write(self.writes.client())
            except ETCD_REFUSED as exc:  # etcd answered: another endpoint would say the same
                raise WriteRefused(f"{type(exc).__name__}: {exc}") from exc
            except ETCD_DOWN as exc:
                self.writes.rotate()
                if attempt == len(self.writes.urls) - 1:
                    raise SourceDown(str(exc)) from exc
        raise AssertionError("not reached: the last attempt returns or raises")

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
