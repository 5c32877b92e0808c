"""What the routing table is fed from, whatever etcd API serves it.

A *source* loads etcd directories into mirrors (resolvers/tree.py), keeps them live, and
makes the writes gogeta does (`lastAccess`, the wake-up; for ACME a few plain keys and a
lock that expires: `get`, `create`, `put`, `delete`). The resolver
(resolvers/table.py), the mirrors and the model never know which API fed them: a second
etcd API is a second module implementing `Source` (resolvers/etcd2.py is the v2 one).
Here too: the machinery every source shares (backoff, one log line per outage).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

import gevent

from errors import SourceDown, WriteRefused
from resolvers.tree import Node

__all__ = ["SourceDown", "WriteRefused"]  # raised by sources, caught by their users

log = logging.getLogger(__name__)

BACKOFF_FIRST = 0.05
BACKOFF_CAP = 5.0

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

    def load(self, nodes: Iterable[Node]) -> None: ...

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


class Backoff:
    """Capped exponential backoff with jitter: 50 ms, 100 ms, ... up to 5 s."""

    def __init__(self, first: float = BACKOFF_FIRST, cap: float = BACKOFF_CAP) -> None:
        self.first, self.cap = first, cap
        self.delay = first

    def next(self) -> float:
        delay = self.delay
        self.delay = min(self.cap, self.delay * 2)
        return delay * random.uniform(0.8, 1.2)

    def reset(self) -> None:
        self.delay = self.first


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


class Reachability:
    """Whether etcd answers, as one resolver's watchers see it, logged once per change.

    A resolver watches with one greenlet per directory and each one notices an outage: the
    first to fail logs that etcd went away, the last to get an answer again that it is back.
    """

    def __init__(self) -> None:
        self._failing: set[str] = set()
        self._since = 0.0
        self.problem: str | None = None  # the last problem logged, until etcd answers

    @property
    def unreachable(self) -> bool:
        return bool(self._failing)

    def failed(
        self, who: str, endpoint: str, exc: BaseException, problem: str | None = None
    ) -> None:
        """`problem`: etcd answered but cannot be used (bad credentials...), said instead."""
        if problem is not None and problem != self.problem:
            log.error("%s (%s)", problem, endpoint)  # once per problem, not per retry
            self.problem = problem
        elif not self._failing and problem is None:
            log.warning(
                "etcd unreachable (%s: %s); serving the last table, retrying", endpoint, exc
            )
        if not self._failing:
            self._since = time.monotonic()
        self._failing.add(who)

    def answered(self, who: str, endpoint: str) -> None:
        if who not in self._failing:
            return
        self._failing.discard(who)
        if not self._failing:
            self.problem = None
            log.warning(
                "etcd reachable again at %s after %.1f s", endpoint, time.monotonic() - self._since
            )
