"""etcd's endpoints and whether they answer: one endpoint at a time, the next on failure,
a growing wait between tries, and one log line when etcd goes away and one when it is
back, however many watchers and writes notice (docs/behaviour.md §5.4). Nothing here
speaks to etcd: the sources (resolvers/etcd2.py, resolvers/etcd3.py) do, through these.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

from errors import SourceDown, WriteRefused

log = logging.getLogger(__name__)
T = TypeVar("T")

BACKOFF_FIRST = 0.05
BACKOFF_CAP = 5.0


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


class Reachability:
    """Whether etcd answers, as one resolver's watchers see it, logged once per change.

    A resolver watches with one greenlet per directory and each one notices an outage: the
    first to fail logs that etcd went away, the last to get an answer again that it is back.
    A write that no endpoint takes says so too, when it is the first to notice (the watchers
    may not have seen the outage yet, or never will: a cluster without quorum still answers
    reads), without making etcd unreachable for health: only the watchers decide that.
    """

    def __init__(self) -> None:
        self._failing: set[str] = set()
        self._since = 0.0
        self._announced = False  # an outage was logged and its end not yet
        self.problem: str | None = None  # the last problem logged, until etcd answers

    @property
    def unreachable(self) -> bool:
        return bool(self._failing)

    def failed(
        self, who: str, endpoint: str, exc: BaseException, problem: str | None = None
    ) -> None:
        """`problem`: etcd answered but cannot be used (bad credentials...), said instead."""
        if problem is None:
            self._announce(endpoint, exc)
        else:
            if problem != self.problem:
                log.error("%s (%s)", problem, endpoint)  # once per problem, not per retry
                self.problem = problem
            if not self._announced:
                self._announced = True
                self._since = time.monotonic()
        self._failing.add(who)

    def answered(self, who: str, endpoint: str) -> None:
        if who not in self._failing:
            return
        self._failing.discard(who)
        if not self._failing:
            self.problem = None
            self._recovered(endpoint)

    def write_failed(self, endpoint: str, exc: BaseException) -> None:
        """No endpoint took a write (or a read outside the watch)."""
        self._announce(endpoint, exc)

    def write_answered(self, endpoint: str) -> None:
        if not self._failing:
            self._recovered(endpoint)

    def _announce(self, endpoint: str, exc: BaseException) -> None:
        if self._announced or self._failing:
            return
        log.warning("etcd unreachable (%s: %s); serving the last table, retrying", endpoint, exc)
        self._announced = True
        self._since = time.monotonic()

    def _recovered(self, endpoint: str) -> None:
        if self._announced:
            log.warning(
                "etcd reachable again at %s after %.1f s", endpoint, time.monotonic() - self._since
            )
            self._announced = False


class EndpointRing:
    """The etcd endpoints of `-etcdAddress`, used one at a time, the next one on failure."""

    def __init__(self, urls: Sequence[str]) -> None:
        self.urls = list(urls)
        self._position = 0

    @property
    def current(self) -> str:
        return self.urls[self._position]

    def rotate(self) -> None:
        """Give up on the current endpoint: the next call goes to the next one."""
        self._position = (self._position + 1) % len(self.urls)


def on_any_endpoint(
    endpoints: EndpointRing, call: Callable[[], T], reachability: Reachability | None = None
) -> T:
    """`call` (one write or read, raising SourceDown or WriteRefused) on each endpoint in
    turn until one answers; a refusal is final, as another endpoint would say the same.
    `reachability` hears whether etcd answered.

    Dropped at the first failure, a write behind a dead first endpoint would be lost
    (and a lastAccess not asked again for a whole interval).
    """
    for attempt in range(len(endpoints.urls)):
        endpoint = endpoints.current
        try:
            answer = call()
        except SourceDown as exc:
            endpoints.rotate()
            if attempt == len(endpoints.urls) - 1:
                if reachability is not None:
                    reachability.write_failed(endpoint, exc)
                raise
            continue
        except WriteRefused:
            if reachability is not None:
                reachability.write_answered(endpoint)
            raise
        if reachability is not None:
            reachability.write_answered(endpoint)
        return answer
    raise AssertionError("not reached: the last attempt returns or raises")
