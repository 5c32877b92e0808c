"""The etcd v3 watcher: one prefix mirrored by a range read and a watch (docs/behaviour.md §5.4).

Rules:
- load a prefix with one range read, then watch it from the read's revision + 1 and after
  each event from its revision + 1, so nothing written between or during the two is lost;
- one watch stream per prefix: over HTTP/1.1 the gateway takes one create request per
  stream, and one range covering both prefixes would carry every key between them;
- a watch cancelled with `compact_revision` (history compacted) reloads; so does a new
  `cluster_id` (another etcd: its revisions say nothing about ours);
- a stream that ends or fails reconnects with capped exponential backoff, each endpoint in
  turn, and resumes from the last revision + 1; one silent for `watch_timeout` is reopened,
  which shows etcd still answers (a frozen etcd does not answer the new one).
Reads only: gogeta's writes are resolvers/etcd3.py's.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import gevent
import urllib3

from resolvers.endpoints import BACKOFF_CAP, Backoff, Reachability
from resolvers.etcd3_gateway import (
    REQUEST_TIMEOUT,
    ClusterChanged,
    Compacted,
    EtcdDown,
    EtcdRefused,
    Gateway,
    WrongApi,
    b64,
    error_of,
    lines_of,
    range_end,
    unb64,
)
from resolvers.nodes import Node
from resolvers.source import DirectoryWatcher, Mirror, OnChange, Turns, uncollected

log = logging.getLogger(__name__)

WATCH_TIMEOUT = 55.0  # seconds a watch may stay silent before we reopen it


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
                (Node(unb64(kv["key"]), unb64(kv.get("value", "")), False) for kv in kvs),
                Turns(),
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
            raise EtcdDown(error_of(line)[1])
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
