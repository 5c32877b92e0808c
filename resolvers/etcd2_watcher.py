"""The etcd v2 watcher: one directory mirrored by load and long poll (docs/behaviour.md §5.4).

Rules:
- load recursively (resolvers/etcd2_client.py walks the answer), then watch from the
  answer's `X-Etcd-Index` + 1 and after each event from its `modifiedIndex` + 1, so nothing
  written between or during the two is lost;
- a silent watch stays open, however long (etcd keeps only 1,000 events: asked again at
  its index, it could find them gone); etcd's 401 "event index cleared" reloads;
- meanwhile, a watch silent for a while is probed on another connection with a cheap read
  and a short timeout: a frozen etcd holds long polls open forever, and only a question it
  does not answer tells it from an idle one;
- after an outage, resume only where etcd still holds the history we followed: its index
  not lower, its cluster id the same, and a key we saw still created at the same index (an
  etcd restarted empty with the same flags has the same cluster id); otherwise reload. So
  is a watch far behind, when one reload costs less than one long poll per event;
- when etcd fails, the last table keeps serving; reconnect with capped exponential
  backoff, trying each endpoint in turn; log each state change once, not each retry.
Reads only: gogeta's writes are resolvers/etcd2.py's.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import etcd
import gevent

from resolvers.endpoints import Backoff, Reachability
from resolvers.etcd2_client import (
    ETCD_DOWN,
    Endpoints,
    index_of_miss,
    nodes_of,
    problem_of,
    read_tree,
)
from resolvers.nodes import Node
from resolvers.source import DirectoryWatcher, Mirror, OnChange, Turns, uncollected

log = logging.getLogger(__name__)

WATCH_TIMEOUT = 55.0  # seconds of a silent long poll after which etcd is probed (again)
PROBE_TIMEOUT = 5.0  # at most: a probe etcd does not answer in this long counts as an outage
# Never written: reading it (under the prefix, which a restricted user may read) answers
# etcd's current index.
PROBE_NAME = ".gogeta-index-probe"
# A watch far behind reloads only when following the events would take longer than this
# and than twice the last load: a big table (seconds to load) is never reloaded for a burst.
CATCH_UP_SECONDS = 0.1
POLL_SECONDS = 0.002  # first guess of one long poll per event (~1.3 ms measured here)


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
            result = self._next_event(client)
            if result is None:  # etcd's index went back: its data was lost
                self.index = self._load()
                continue
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
            index, body = read_tree(client, self.prefix, Turns())
        except etcd.EtcdKeyNotFound as exc:
            index = index_of_miss(exc)
            self.mirror.load([])
            self.witness = None
        else:
            with uncollected():
                witness: list[tuple[str, int, int]] = []
                nodes = nodes_of(body, witness)
                del body  # the generator's reference is dropped once decoded
                self.mirror.load(nodes, Turns())
                self.witness = witness[0][:2] if witness else None
        self.last_load = (time.time(), f"{self.prefix}: {self.load_reason}")
        self.load_seconds = time.monotonic() - started
        self._gap, self.lag = 1.0, 0
        self._loaded(index)
        return index + 1

    def _next_event(self, client: Any) -> Any:
        """The next event from `self.index`, or None when etcd's index went back.

        The long poll stays open however long it is silent: asked again at the same index
        after more than 1,000 writes elsewhere (other keys, gogeta's own `lastAccess`), it
        would find that history gone and reload the whole directory. Meanwhile, after each
        `watch_timeout` of silence, etcd is probed on another connection: a frozen etcd holds
        a poll open forever, and only a question it does not answer tells it from an idle
        one (the probe then raises, an outage).
        """
        poll = gevent.spawn(self._poll, client, self.index)
        try:
            while True:
                poll.join(self.watch_timeout)
                if poll.ready():
                    result, error = poll.value
                    if error is not None:
                        raise error
                    return result
                if self._index_went_back():
                    return None
        finally:
            poll.kill()  # a poll still open: its connection is closed, never reused

    def _poll(self, client: Any, index: int) -> tuple[Any, Exception | None]:
        """One long poll; what it raised is handed back, raised again by the watcher."""
        try:
            found = client.read(self.prefix, recursive=True, wait=True, waitIndex=index, timeout=0)
        except Exception as exc:
            return None, exc
        return found, None

    def _index_went_back(self) -> bool:
        """A cheap read: raises when etcd does not answer in `probe_timeout`; True (and the
        reason noted for the reload) if its index went back.

        Also where another etcd at the address shows first (its cluster id).
        """
        current = self._went_back_to(self.endpoints.client())
        if current is None:
            return False
        self.load_reason = f"etcd's index went back to {current} (its data was lost)"
        return True

    def _went_back_to(self, client: Any) -> int | None:
        """etcd's index when it went back below ours (logged), else None: read from the probe
        key's miss, in `probe_timeout` at most (someone wrote the key: cannot tell, None)."""
        try:
            client.read(self.probe_key, timeout=self.probe_timeout)
            return None
        except etcd.EtcdKeyNotFound as exc:
            current = index_of_miss(exc)
        if self.index is not None and current + 1 < self.index:
            log.warning("%s: etcd index went back to %s: reloading", self.prefix, current)
            return current
        return None

    def _holds_our_history(self) -> bool:
        """After an outage: whether etcd still holds what we followed, so we may resume."""
        client = self.endpoints.client()
        if self._went_back_to(client) is not None:
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
