"""The etcd v3 source: prefixes mirrored by a range read and a watch, and gogeta's two writes.

The only module that talks to etcd's v3 API, through etcd's JSON gateway (`/v3/...`, every
call a POST, keys and values base64) on urllib3: gRPC clients would block gevent's loop.
Rules:
- load a prefix with one range read, then watch it from the read's revision + 1 and after
  each event from its revision + 1, so nothing written between or during the two is lost;
- one watch stream per prefix: over HTTP/1.1 the gateway takes one create request per
  stream, and one range covering both prefixes would carry every key between them;
- a watch cancelled with `compact_revision` (history compacted) reloads; so does a new
  `cluster_id` (another etcd: its revisions say nothing about ours);
- a stream that ends or fails reconnects with capped exponential backoff, each endpoint in
  turn, and resumes from the last revision + 1; one silent for `watch_timeout` is reopened,
  which shows etcd still answers (a frozen etcd does not answer the new one);
- with `-etcdUsername`, a token from `/v3/auth/authenticate`, taken again when etcd no
  longer accepts it (simple tokens expire after `--auth-token-ttl` idle seconds).
"""

from __future__ import annotations

import base64
import json
import logging
import time
from collections.abc import Iterator
from typing import Any

import gevent
import urllib3

from resolvers.source import (
    BACKOFF_CAP,
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

WATCH_TIMEOUT = 55.0  # seconds a watch may stay silent before we reopen it
REQUEST_TIMEOUT = 10.0
CONNECT_TIMEOUT = 5.0

# gRPC status codes etcd puts in its JSON errors
CODE_INVALID_ARGUMENT = 3  # also "authentication failed" and "user name is empty"
CODE_OUT_OF_RANGE = 11  # "required revision has been compacted"
CODE_UNAUTHENTICATED = 16  # "invalid auth token": expired, or etcd restarted


class EtcdDown(Exception):
    """etcd did not answer: no connection, a timeout, a 5xx, an error ending a stream."""


class EtcdRefused(Exception):
    """etcd answered, and said no (permissions, a bad request): retrying won't help soon."""


class BadCredentials(EtcdRefused):
    """The user or password is wrong, or etcd wants one and none is set."""


class WrongApi(EtcdRefused):
    """Nothing serves etcd's v3 API at the endpoint."""


class Compacted(Exception):
    """The revision asked for is older than etcd's compacted history."""


class ClusterChanged(Exception):
    """The endpoint belongs to another etcd cluster than the one loaded from."""


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode("ascii")


def unb64(text: str) -> str:
    return base64.b64decode(text).decode("utf-8", "replace")


def range_end(prefix: str) -> str:
    """The end of the range of every key starting with `prefix`: its last byte + 1."""
    raw = prefix.encode()
    return base64.b64encode(raw[:-1] + bytes([raw[-1] + 1])).decode("ascii")


def _error_of(data: bytes) -> tuple[int | None, str]:
    """(gRPC code, message) of one of etcd's JSON error answers."""
    try:
        body = json.loads(data)
    except ValueError:
        return None, data[:200].decode("utf-8", "replace").strip()
    if not isinstance(body, dict):
        return None, str(body)[:200]
    error = body.get("error")
    if isinstance(error, dict):  # a stream's error: {"error": {"grpc_code":..., "message":...}}
        return error.get("grpc_code"), str(error.get("message", error))
    code = body.get("code")
    return code if isinstance(code, int) else None, str(body.get("message") or error)


class Gateway(EndpointRing):
    """etcd's JSON gateway at the endpoints of `-etcdAddress`, one at a time, with a token."""

    def __init__(self, access: EtcdAccess) -> None:
        super().__init__([url.rstrip("/") for url in access.urls])
        self.access = access
        self.token: str | None = None
        self.pool = urllib3.PoolManager(
            maxsize=2,
            retries=False,
            ca_certs=access.ca_file or None,
            cert_file=access.cert_file or None,
            key_file=access.key_file or None,
            cert_reqs="CERT_REQUIRED",
        )

    def rotate(self) -> None:
        self.token = None  # each endpoint's token is its own
        super().rotate()

    def call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST `body` to `path`; the decoded answer. Raises EtcdDown, EtcdRefused..."""
        for attempt in range(2):
            status, data = self._post(path, body, self._headers())
            if status == 401 and self.access.username and attempt == 0:
                self.token = None  # expired (or etcd restarted): authenticate again
                continue
            return self._answer(path, status, data)
        raise AssertionError("not reached: the second attempt returns or raises")

    def stream(self, path: str, body: dict[str, Any], read_timeout: float) -> Any:
        """An open streaming answer (urllib3's response) to a POST: the caller closes it."""
        for attempt in range(2):
            try:
                resp = self.pool.urlopen(
                    "POST",
                    self.current + path,
                    body=json.dumps(body).encode(),
                    headers=self._headers(),
                    timeout=urllib3.Timeout(connect=CONNECT_TIMEOUT, read=read_timeout),
                    preload_content=False,
                    redirect=False,
                )
            except (urllib3.exceptions.HTTPError, OSError) as exc:
                raise EtcdDown(str(exc)) from exc
            if resp.status == 200:
                return resp
            try:
                data = resp.read()
            finally:
                resp.release_conn()
            if resp.status == 401 and self.access.username and attempt == 0:
                self.token = None  # as in `call`: authenticate again, once
                continue
            self._answer(path, resp.status, data)  # raises
            raise EtcdDown(f"answered {resp.status} to {path}")
        raise AssertionError("not reached: the second attempt returns or raises")

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if self.access.username:
            if self.token is None:
                self.token = self._authenticate()
            headers["Authorization"] = self.token
        return headers

    def _authenticate(self) -> str:
        credentials = {"name": self.access.username, "password": self.access.password}
        status, data = self._post("/v3/auth/authenticate", credentials, {})
        try:
            answer = self._answer("/v3/auth/authenticate", status, data)
        except EtcdRefused as exc:
            raise BadCredentials(
                f"etcd at {self.current} refused user {self.access.username!r}: {exc}"
                " (check -etcdUsername and -etcdPassword)"
            ) from None
        token = answer.get("token")
        if not isinstance(token, str) or not token:
            raise BadCredentials(f"etcd at {self.current} gave no token: is auth enabled?")
        return token

    def _post(self, path: str, body: dict[str, Any], headers: dict[str, str]) -> tuple[int, bytes]:
        try:
            resp = self.pool.urlopen(
                "POST",
                self.current + path,
                body=json.dumps(body).encode(),
                headers={"Content-Type": "application/json", **headers},
                timeout=urllib3.Timeout(connect=CONNECT_TIMEOUT, read=REQUEST_TIMEOUT),
                redirect=False,
            )
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise EtcdDown(str(exc)) from exc
        return resp.status, resp.data

    def _answer(self, path: str, status: int, data: bytes) -> dict[str, Any]:
        where = self.current
        if status == 404:
            raise WrongApi(
                f"etcd at {where} does not serve the v3 API ({path}: 404); an etcd older"
                " than 3.4, or one serving only v2, needs -etcdApi v2"
            )
        if status >= 500:
            raise EtcdDown(f"{status} {_error_of(data)[1]}")
        if status != 200:
            code, message = _error_of(data)
            if code == CODE_OUT_OF_RANGE and "compacted" in message:
                raise Compacted(message)
            if status == 401 or (code == CODE_INVALID_ARGUMENT and "user name" in message):
                raise BadCredentials(
                    f"etcd at {where} wants credentials: {message} (set -etcdUsername and"
                    " GOGETA_ETCD_PASSWORD)"
                    if not self.access.username
                    else f"etcd at {where} refused user {self.access.username!r}: {message}"
                )
            raise EtcdRefused(f"etcd at {where} refused {path}: {message}")
        try:
            answer = json.loads(data)
        except ValueError as exc:
            raise EtcdDown(f"answered {path} with invalid JSON: {exc}") from exc
        if not isinstance(answer, dict):
            raise EtcdDown(f"answered {path} with {type(answer).__name__}")
        return answer


def lines_of(resp: Any) -> Iterator[bytes]:
    """The newline-separated JSON objects of a streaming answer, as they arrive."""
    pending = b""
    for chunk in resp.stream(65536, decode_content=False):
        pending += chunk
        *complete, pending = pending.split(b"\n")
        yield from (line for line in complete if line.strip())
    if pending.strip():
        yield pending


class Refusals:
    """What etcd refuses (credentials, API, permissions), logged once per message."""

    def __init__(self) -> None:
        self._said: set[str] = set()

    def report(self, message: str) -> None:
        if message not in self._said:
            self._said.add(message)
            log.error("%s", message)

    def clear(self) -> None:
        self._said.clear()


class Watcher(DirectoryWatcher[Gateway]):
    """Mirrors one prefix (`mirror.prefix` + "/") of etcd into `mirror`, forever.

    Its `lag` stays 0: a watch message carries every event up to its revision, applied at
    once.
    """

    position_name = "revision"

    def __init__(
        self,
        gateway: Gateway,
        mirror: Mirror,
        on_change: OnChange = lambda event, detail: None,
        watch_timeout: float = WATCH_TIMEOUT,
        reachability: Reachability | None = None,
        refusals: Refusals | None = None,
    ) -> None:
        super().__init__(gateway, mirror, on_change, reachability)
        self.watch_timeout = watch_timeout
        self.refusals = refusals or Refusals()
        self.revision: int | None = None  # next revision to watch from; None: (re)load first
        self.cluster_id: str | None = None  # of the etcd the table was loaded from

    @property
    def position(self) -> int | None:
        return self.revision

    def reconnected(self) -> None:
        self.refusals.clear()
        self.last_error = None

    def run(self) -> None:
        backoff = Backoff()
        while True:
            try:
                if self.revision is None:
                    self._load()
                    self._set_reachable(True)
                    backoff.reset()
                if self._watch(backoff):
                    continue  # reopened after a silence: not a failure
                # The stream ended (etcd stopping...): reconnect as after a failure.
                self._set_reachable(False, EtcdDown("watch ended"))
                gevent.sleep(backoff.next())
            except Compacted as exc:
                log.info(
                    "%s: etcd compacted its history past revision %s (%s): reloading",
                    self.prefix,
                    self.revision,
                    exc,
                )
                self.revision = None
            except ClusterChanged as exc:
                log.warning("%s: %s: reloading", self.prefix, exc)
                self.revision = None
            except EtcdRefused as exc:
                self._refused(exc)
                if isinstance(exc, WrongApi) and len(self.endpoints.urls) > 1:
                    self.endpoints.rotate()  # another endpoint may be the etcd meant
                gevent.sleep(min(BACKOFF_CAP, backoff.next()))
            except EtcdDown as exc:
                self._retry_later(exc, backoff)

    def _load(self) -> None:
        answer = self.endpoints.call(
            "/v3/kv/range",
            {"key": b64(self.prefix + "/"), "range_end": range_end(self.prefix + "/")},
        )
        header = answer.get("header") or {}
        revision = int(header.get("revision", 0))
        kvs = answer.pop("kvs", None) or []
        del answer
        with uncollected():
            self.mirror.load(
                Node(unb64(kv["key"]), unb64(kv.get("value", "")), False) for kv in kvs
            )
            del kvs
        self.revision = revision + 1
        self.cluster_id = header.get("cluster_id")
        self._loaded(revision)

    def _watch(self, backoff: Backoff) -> bool:
        """Watch from `self.revision` until the stream ends (False) or stays silent (True)."""
        assert self.revision is not None
        request = {
            "create_request": {
                "key": b64(self.prefix + "/"),
                "range_end": range_end(self.prefix + "/"),
                "start_revision": str(self.revision),
            }
        }
        for attempt in range(2):
            # The answer head and `created` come at once from a live etcd: a frozen one is down.
            with gevent.Timeout(REQUEST_TIMEOUT, EtcdDown("no answer")):
                resp = self.endpoints.stream("/v3/watch", request, self.watch_timeout)
                try:
                    lines = lines_of(resp)
                    created = self._result(next(lines, b""))
                except BaseException:
                    resp.close()
                    resp.release_conn()
                    raise
            if not created.get("canceled"):
                break
            resp.close()
            resp.release_conn()
            reason = str(created.get("cancel_reason", "cancelled"))
            if attempt == 0 and self.endpoints.access.username:
                self.endpoints.token = None  # refused at once: the token expired, take another
                continue
            raise EtcdRefused(f"etcd at {self.endpoints.current} refused to watch: {reason}")
        try:
            self._set_reachable(True)
            backoff.reset()
            for line in lines:
                result = self._result(line)
                if result.get("canceled"):
                    raise EtcdDown(f"watch cancelled: {result}")
                events = result.get("events")
                if events:
                    self._apply(events)
            return False
        except urllib3.exceptions.ReadTimeoutError:
            return True
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise EtcdDown(str(exc)) from exc
        finally:
            resp.close()
            resp.release_conn()

    def _result(self, line: bytes) -> dict[str, Any]:
        """The `result` of one message of the watch stream; raises on errors."""
        if not line:
            raise EtcdDown("watch ended before it started")
        try:
            message = json.loads(line)
        except ValueError as exc:
            raise EtcdDown(f"invalid watch message: {exc}") from exc
        if not isinstance(message, dict):
            raise EtcdDown("invalid watch message")
        if "error" in message:  # etcd going away mid-stream: {"error": {"grpc_code": 14...}}
            raise EtcdDown(_error_of(line)[1])
        result = message.get("result") or {}
        if result.get("compact_revision") and result.get("canceled"):
            raise Compacted(f"compacted at revision {result['compact_revision']}")
        cluster = (result.get("header") or {}).get("cluster_id")
        if cluster and self.cluster_id and cluster != self.cluster_id:
            raise ClusterChanged(
                f"etcd at {self.endpoints.current} is another cluster ({cluster}, was"
                f" {self.cluster_id}): its revisions are not the ones the table reflects"
            )
        return dict(result)

    def _apply(self, events: list[dict[str, Any]]) -> None:
        for event in events:
            kv = event.get("kv") or {}
            key = unb64(kv.get("key", ""))
            deleted = event.get("type") == "DELETE"  # a PUT event has no `type`
            node = Node(key, None if deleted else unb64(kv.get("value", "")), False)
            self.revision = int(kv.get("mod_revision", 0)) + 1
            self.events_applied += 1
            if self.mirror.apply(node, "delete" if deleted else "set"):
                self.on_change("event", key)

    def _refused(self, exc: EtcdRefused) -> None:
        self.last_error = str(exc)
        self.refusals.report(str(exc))
        if self.reachable is not False:
            self.unreachable_since = time.time()
        self.reachable = False


class V3Source(WatchedSource[Watcher]):
    """etcd's v3 API (its JSON gateway) as a `Source`: one watcher greenlet per prefix."""

    name = "etcd v3"
    implicit_dirs = True  # v3 has keys only

    def __init__(self, access: EtcdAccess, watch_timeout: float = WATCH_TIMEOUT) -> None:
        super().__init__()
        self.access = access
        self.watch_timeout = watch_timeout
        self.refusals = Refusals()
        self.writes = Gateway(access)

    def watcher(self, mirror: Mirror, on_change: OnChange) -> Watcher:
        return Watcher(
            Gateway(self.access),
            mirror,
            on_change,
            watch_timeout=self.watch_timeout,
            reachability=self.reachability,
            refusals=self.refusals,
        )

    def endpoint(self) -> None:
        return None  # not reported by this source (its state's `endpoint` stays None)

    def touch(self, service_dir: str, service: str, index: str, stamp: str) -> None:
        # A put only while the instance's `location` exists (gogeta only routes to an
        # instance that has one): a lastAccess never re-creates a deleted instance.
        base = f"{service_dir}/{service}/{index}"
        self._on_any_endpoint(
            {
                "compare": [
                    {
                        "key": b64(f"{base}/location"),
                        "result": "GREATER",
                        "target": "CREATE",
                        "create_revision": "0",
                    }
                ],
                "success": [
                    {"request_put": {"key": b64(f"{base}/lastAccess"), "value": b64(stamp)}}
                ],
            }
        )

    def wake(self, service_dir: str, service: str, index: str) -> bool:
        key = b64(f"{service_dir}/{service}/{index}/status/expected")
        answer = self._on_any_endpoint(
            {
                "compare": [
                    {"key": key, "result": "EQUAL", "target": "VALUE", "value": b64("passivated")}
                ],
                "success": [{"request_put": {"key": key, "value": b64("started")}}],
            }
        )
        return bool(answer.get("succeeded"))  # absent when the compare failed

    def get(self, key: str) -> str | None:
        kvs = self._on_any_endpoint({"key": b64(key)}, "/v3/kv/range").get("kvs") or []
        return unb64(kvs[0].get("value", "")) if kvs else None

    def create(self, key: str, value: str, ttl: int | None = None) -> bool:
        put: dict[str, Any] = {"key": b64(key), "value": b64(value)}
        if ttl is not None:
            put["lease"] = self._on_any_endpoint({"TTL": str(ttl)}, "/v3/lease/grant")["ID"]
        answer = self._on_any_endpoint(
            {
                "compare": [
                    {"key": b64(key), "result": "EQUAL", "target": "CREATE", "create_revision": "0"}
                ],
                "success": [{"request_put": put}],
            }
        )
        if answer.get("succeeded"):
            return True
        if "lease" in put:  # not needed: not left to expire on its own
            self._on_any_endpoint({"ID": put["lease"]}, "/v3/lease/revoke")
        return False

    def put(self, key: str, value: str) -> None:
        self._on_any_endpoint({"key": b64(key), "value": b64(value)}, "/v3/kv/put")

    def delete(self, key: str, value: str) -> bool:
        answer = self._on_any_endpoint(
            {
                "compare": [
                    {"key": b64(key), "result": "EQUAL", "target": "VALUE", "value": b64(value)}
                ],
                "success": [{"request_delete_range": {"key": b64(key)}}],
            }
        )
        return bool(answer.get("succeeded"))

    def _on_any_endpoint(self, body: dict[str, Any], path: str = "/v3/kv/txn") -> dict[str, Any]:
        """One call (a transaction unless `path` says) to the endpoint in use, the next on
        failure."""

        def once() -> dict[str, Any]:
            try:
                return self.writes.call(path, body)
            except (EtcdRefused, Compacted) as exc:  # another endpoint would say the same
                raise WriteRefused(str(exc)) from exc
            except EtcdDown as exc:
                raise SourceDown(f"{self.writes.current}: {exc}") from exc

        return on_any_endpoint(self.writes, once)
