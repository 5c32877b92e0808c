"""What the routing table is fed from, whatever etcd API serves it.

A *source* loads etcd directories into mirrors (resolvers/tree.py), keeps them live, and
makes the writes gogeta does (`lastAccess`, the wake-up; for ACME a few plain keys and a
lock that expires: `get`, `create`, `put`, `delete`). The resolver
(resolvers/table.py), the mirrors and the model never know which API fed them: a second
etcd API is a second module implementing `Source` (resolvers/etcd2.py is the v2 one).
Here too: the machinery every source shares, whatever its API (a watcher greenlet per
directory and what the source says of them; endpoints, backoff and the one log line per
outage are in resolvers/endpoints.py); nothing here speaks to etcd.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, Protocol, TypeVar

import gevent

from errors import SourceDown, WriteRefused
from resolvers.endpoints import Backoff, EndpointRing, Reachability
from resolvers.nodes import Node, Pause, no_pause

__all__ = ["SourceDown", "WriteRefused"]  # raised by sources, caught by their users

log = logging.getLogger(__name__)
T = TypeVar("T")


OnChange = Callable[[str, Any], None]  # ("load", index) or ("event", key)


@dataclass(frozen=True, slots=True)
class EtcdAccess:
    """How to reach etcd, whatever its API: endpoints, TLS and credentials."""

    urls: tuple[str, ...]
    ca_file: str = ""  # verifies https endpoints; empty: the system's CAs
    cert_file: str = ""  # client certificate, with key_file (--client-cert-auth)
    key_file: str = ""
    username: str = ""
    password: str = field(default="", repr=False)  # never in a repr, a log or a page


class Mirror(Protocol):
    prefix: str

    def load(self, nodes: Iterable[Node], pause: Pause = no_pause) -> None:
        """Replace the mirror's content with `nodes`, calling `pause` now and then."""

    def apply(self, node: Node, action: str) -> bool: ...


@dataclass(frozen=True, slots=True)
class SyncState:
    """How a source stands with etcd: cheap to build, for health checks and metrics."""

    loaded: bool  # every directory loaded at least once
    index: int | None  # the etcd index (v2) or revision (v3) the table reflects
    unreachable_since: float | None  # epoch seconds, None while etcd answers
    last_error: str | None
    events_applied: int
    reloads: int
    lag: int  # events etcd had beyond the last one applied
    # Why etcd cannot be used, when it answers but refuses (credentials, API not served,
    # TLS): the reason `/__gogeta/health` gives. None for a plain outage.
    problem: str | None = None
    endpoint: str | None = None  # the etcd endpoint in use
    last_load: float | None = None  # epoch seconds of the last (re)load of a directory
    last_load_reason: str | None = None  # why it was loaded then


class Source(Protocol):
    """One etcd API behind the routing table."""

    name: str  # for logs and /__gogeta/routes: "etcd v2"...
    # Keys only, no directories (etcd v3): a domain or an instance exists while a key under
    # it does, and goes with its last key (resolvers/tree.py).
    implicit_dirs: bool

    def mirror(self, mirror: Mirror, on_change: OnChange) -> None:
        """Keep `mirror` (its `prefix`) loaded and live once started. Before `start`."""

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def state(self) -> SyncState: ...

    def touch(self, service_dir: str, service: str, index: str, stamp: str) -> None:
        """Write the instance's `lastAccess`, never re-creating a deleted instance.
        Raises SourceDown or WriteRefused."""

    def wake(self, service_dir: str, service: str, index: str) -> bool:
        """Compare-and-swap `status/expected` from `passivated` to `started`: False when
        another gogeta (or anyone) changed it first. Raises SourceDown or WriteRefused."""
        ...

    def get(self, key: str) -> str | None:
        """The value of `key` read from etcd now (None: no such key). Raises SourceDown..."""
        ...

    def create(self, key: str, value: str, ttl: int | None = None) -> bool:
        """Write `key` only if it does not exist (False: it does), gone after `ttl` seconds
        when given (a v2 TTL, a v3 lease): a lock whose dead holder releases it."""
        ...

    def put(self, key: str, value: str) -> None:
        """Write `key`, whatever it held. Raises SourceDown or WriteRefused."""

    def delete(self, key: str, value: str) -> bool:
        """Delete `key` if it still holds `value` (False: it does not, or is gone)."""
        ...


class Background:
    """One greenlet running `run` between `start` and `stop` (both idempotent)."""

    _greenlet: gevent.Greenlet | None = None

    def run(self) -> None:
        raise NotImplementedError

    def start(self) -> None:
        if self._greenlet is None:
            self._greenlet = gevent.spawn(self.run)

    def stop(self) -> None:
        if self._greenlet is not None:
            self._greenlet.kill(block=False)
            self._greenlet = None


TURN_SECONDS = 0.002


class Turns:
    """A load's `pause`: once it has run `TURN_SECONDS` in a row, every other greenlet
    ready to run (requests) gets its turn before it goes on (docs/behaviour.md §5.4)."""

    def __init__(self) -> None:
        self._since = time.perf_counter()

    def __call__(self) -> None:
        if time.perf_counter() - self._since >= TURN_SECONDS:
            gevent.sleep(0)
            self._since = time.perf_counter()


_loads = 0  # (re)loads in progress
_collecting = True  # whether the cyclic collector was on when the first of them began


@contextmanager
def uncollected() -> Iterator[None]:
    """A (re)load of a directory without the cyclic collector, the table frozen after it.

    Decoding and building the table make a million objects at 100,000 domains: the cyclic
    collector, which would walk everything alive again and again, waits until the end of
    the last load in progress. The table has no reference cycles (reference counting frees
    the old one), so it is then frozen out of the collector's sight: a full collection
    under traffic no longer walks it.
    """
    global _loads, _collecting
    if _loads == 0:
        _collecting = gc.isenabled()
        gc.disable()
    _loads += 1
    try:
        yield
    finally:
        _loads -= 1
        # Directories load at once, each in its greenlet: the collector waits for the last.
        if _loads == 0 and _collecting:
            gc.enable()
    gc.freeze()


E = TypeVar("E", bound=EndpointRing)


class DirectoryWatcher(Background, Generic[E]):
    """Mirrors one directory (`mirror.prefix`) of etcd into `mirror` from its own greenlet:
    what a watcher holds whatever the API, and how it says etcd answers or not."""

    position_name: ClassVar[str] = "index"  # what the API counts its history in

    def __init__(
        self,
        endpoints: E,
        mirror: Mirror,
        on_change: OnChange,
        reachability: Reachability | None,
    ) -> None:
        self.endpoints = endpoints
        self.mirror = mirror
        self.prefix = mirror.prefix
        self.on_change = on_change
        self.reachability = reachability or Reachability()
        self.loaded = False
        self.reachable: bool | None = None
        self.unreachable_since: float | None = None
        self.last_error: str | None = None
        self.problem: str | None = None  # why etcd answers but cannot be used
        self.events_applied = 0
        self.reloads = 0
        self.lag = 0  # events etcd had beyond the last one applied
        self.last_load: tuple[float, str] | None = None  # (epoch seconds, reason)

    @property
    def position(self) -> int | None:
        """The next etcd index or revision to watch from; None: (re)load first."""
        raise NotImplementedError

    def problem_of(self, exc: BaseException) -> str | None:
        """Why etcd cannot be used although it answered with `exc` (None: an outage)."""
        return None

    def reconnected(self) -> None:
        """etcd answers again after a failure: what the API's watcher forgets then."""

    def _loaded(self, position: int) -> None:
        """The directory was (re)loaded at etcd's `position`: counted, logged, announced."""
        self.reloads += 1
        self.loaded = True
        log.info("%s: loaded at etcd %s %s", self.prefix, self.position_name, position)
        self.on_change("load", position)

    def _set_reachable(
        self, reachable: bool, exc: BaseException | None = None, resumed: bool = True
    ) -> None:
        endpoint = self.endpoints.current
        if reachable:
            if self.reachable is False:
                if resumed:
                    log.info(
                        "%s: resuming from %s %s", self.prefix, self.position_name, self.position
                    )
                self.reachability.answered(self.prefix, endpoint)
                self.reconnected()
            self.reachable = True
            self.unreachable_since = None
            self.problem = None
            return
        assert exc is not None
        self.last_error = f"{endpoint}: {exc}"
        self.problem = self.problem_of(exc)
        if self.reachable is not False or self.problem is not None:
            self.reachability.failed(self.prefix, endpoint, exc, self.problem)
        if self.reachable is not False:
            self.unreachable_since = time.time()
        self.reachable = False

    def _retry_later(self, exc: BaseException, backoff: Backoff) -> None:
        """etcd did not answer: say so, and wait before trying the next endpoint."""
        self._set_reachable(False, exc)
        if len(self.endpoints.urls) > 1:
            self.endpoints.rotate()
        gevent.sleep(backoff.next())


W = TypeVar("W", bound=DirectoryWatcher[Any])


class WatchedSource(Generic[W]):
    """A `Source`'s watchers, one greenlet per directory, and what it says of them."""

    def __init__(self) -> None:
        self.watchers: list[W] = []
        self.reachability = Reachability()  # one line per outage, however many watchers see it

    def watcher(self, mirror: Mirror, on_change: OnChange) -> W:
        """The API's watcher of `mirror`, sharing the source's `reachability`."""
        raise NotImplementedError

    def mirror(self, mirror: Mirror, on_change: OnChange) -> None:
        self.watchers.append(self.watcher(mirror, on_change))

    def start(self) -> None:
        for watcher in self.watchers:
            watcher.start()

    def stop(self) -> None:
        for watcher in self.watchers:
            watcher.stop()

    def endpoint(self) -> str | None:
        """The endpoint `state` reports as in use."""
        return self.watchers[0].endpoints.current if self.watchers else None

    def state(self) -> SyncState:
        watchers = self.watchers
        unreachable = [w.unreachable_since for w in watchers if w.unreachable_since]
        errors = [w.last_error for w in watchers if w.last_error]
        problems = [w.problem for w in watchers if w.problem]
        loads = [w.last_load for w in watchers if w.last_load]
        last_load = max(loads) if loads else None
        return SyncState(
            loaded=all(w.loaded for w in watchers),
            index=min((w.position or 1) - 1 for w in watchers) if watchers else None,
            unreachable_since=min(unreachable) if unreachable else None,
            last_error=errors[-1] if errors else None,
            events_applied=sum(w.events_applied for w in watchers),
            reloads=sum(w.reloads for w in watchers),
            lag=max((w.lag for w in watchers), default=0),
            problem=problems[-1] if problems else None,
            endpoint=self.endpoint(),
            last_load=last_load[0] if last_load else None,
            last_load_reason=last_load[1] if last_load else None,
        )
