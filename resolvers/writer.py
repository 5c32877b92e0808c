"""gogeta's writes to etcd (docs/behaviour.md §2.7, §5.5), waiting for one background greenlet.

`lastAccess` (at most once per instance and interval) and `status/expected` to wake a
passivated instance (once until its state changes, docs/behaviour.md §3.3), written through
a `Source` (resolvers/source.py), best effort: a slow or dead etcd never slows a request.

Rules:
- one write waits per instance and kind, the latest use its time; when `capacity` wait, a
  new one is dropped and counted, and not taken as written: the next use asks again;
- wake-ups first, in the order asked, at once: someone waits for that application;
- then `lastAccess`, in the order first asked, each once the loop has nothing else ready
  (or after `idle_wait` seconds of never being so): under traffic over every instance, a
  write and the watch event it comes back as cost about what a request does, and they
  are bookkeeping, so they take the loop's idle moments rather than requests' turns.
Knows no routing policy: the resolver (resolvers/table.py) says what to write.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from typing import Any

import gevent
import gevent.event

from resolvers.endpoints import Backoff
from resolvers.model import Instance, Service
from resolvers.nodes import PAUSE_EVERY, Pause, no_pause
from resolvers.source import Background, Source, SourceDown, WriteRefused

log = logging.getLogger(__name__)

CAPACITY = 10_000  # writes waiting at most (the instances used faster than etcd takes)
WAKE_GRACE = 300.0  # seconds a woken instance keeps showing the wake-up page, not "error"
# Seconds a lastAccess write waits at most for an idle loop: when it never is, still ~10
# writes a second (a loop that busy turned its writer ~10-25 times a second anyway). Each
# write made for want of an idle moment lands in a burst of requests: 20 ms made more of
# them, and longer waits for the requests of those bursts.
IDLE_WAIT = 0.1


def _listed(services: dict[str, Service], key: tuple[str, str]) -> bool:
    """Whether instance `key` (service, index) is in the table."""
    service = services.get(key[0])
    return service is not None and any(i.index == key[1] for i in service.instances)


class Writer(Background):
    """Writes `lastAccess` and wake-ups from one greenlet, best effort, in order."""

    def __init__(
        self,
        source: Source,
        service_dir: str,
        interval: float,
        capacity: int = CAPACITY,
        idle_wait: float = IDLE_WAIT,
    ) -> None:
        self.source = source
        self.service_dir = service_dir
        self.interval = interval
        self.capacity = capacity
        # (kind, service, index) → epoch seconds of the latest use, oldest asked first: names
        # and numbers only (thousands wait under traffic over every domain).
        self.waiting: OrderedDict[tuple[str, str, str], float] = OrderedDict()
        self._wakes: OrderedDict[tuple[str, str, str], None] = OrderedDict()  # of `waiting`
        self.idle_wait = idle_wait
        self._asked = gevent.event.Event()  # set while something waits
        self.dropped = 0  # writes the full writer had no room for
        self.last_touch: dict[tuple[str, str], float] = {}
        # instance key → (the instance we asked to start, when we asked, monotonic)
        self.woken: dict[tuple[str, str], tuple[Instance, float]] = {}
        self.wakeups = 0
        self.last_access_writes = 0
        self.failing = False
        self._idle: Any = None  # the loop's idle watcher, made in the writer's greenlet

    def prune(self, services: dict[str, Service], pause: Pause = no_pause) -> None:
        """Forget instances that left the table, and lastAccess times already past due;
        `pause` is called every `PAUSE_EVERY` instances."""
        stale = time.monotonic() - self.interval
        for n, (key, touched) in enumerate(list(self.last_touch.items())):
            if n % PAUSE_EVERY == 0:
                pause()
            if (touched < stale or not _listed(services, key)) and (
                self.last_touch.get(key) == touched  # not touched again during a pause
            ):
                del self.last_touch[key]
        self.forget_wakes(services)

    def forget_wakes(self, services: dict[str, Service]) -> None:
        """Drop the wake-up marks of instances no longer in the table."""
        for key in [k for k in self.woken if not _listed(services, k)]:
            del self.woken[key]

    def touch(self, instance: Instance) -> None:
        """Note a use of `instance`; its lastAccess is written at most once per interval."""
        key = (instance.service, instance.index)
        now = time.monotonic()
        last = self.last_touch.get(key)
        if last is not None and now - last < self.interval:
            return
        if self._ask("lastAccess", instance):
            self.last_touch[key] = now

    def wake(self, instance: Instance) -> None:
        """Ask for `instance` to start, once until its state changes (docs/behaviour.md §3.3)."""
        key = (instance.service, instance.index)
        asked = self.woken.get(key)
        if asked is not None and asked[0] is instance:
            return
        if self._ask("wake", instance):
            self.woken[key] = (instance, time.monotonic())

    def _ask(self, kind: str, instance: Instance) -> bool:
        """Whether a write of `kind` for `instance` now waits, at the time of this use."""
        marker = (kind, instance.service, instance.index)
        if marker not in self.waiting and len(self.waiting) >= self.capacity:
            self.dropped += 1  # etcd is far behind: dropping a write beats blocking a request
            return False
        self.waiting[marker] = time.time()  # a marker already waiting keeps its place
        if kind == "wake":
            self._wakes[marker] = None
        self._asked.set()
        return True

    def _next(self) -> tuple[tuple[str, str, str], float]:
        """The next write (a wake-up first) and the time of its latest use."""
        if self._wakes:
            marker = self._wakes.popitem(last=False)[0]
            return marker, self.waiting.pop(marker)
        return self.waiting.popitem(last=False)

    def _until_idle(self) -> None:
        """Return once the loop has nothing else ready to run, or after `idle_wait`."""
        hub = gevent.get_hub()
        if self._idle is None:
            self._idle = hub.loop.idle()  # libev's: runs only when nothing else is pending
        with gevent.Timeout(self.idle_wait, False):
            hub.wait(self._idle)

    def run(self) -> None:
        backoff = Backoff()
        while True:
            if not self.waiting:
                self._asked.clear()
                self._asked.wait()
                continue
            if not self._wakes:
                self._until_idle()  # a wake-up asked meanwhile goes first
            (kind, service, index), when = self._next()
            try:
                self._write(kind, service, index, when)
            except WriteRefused as exc:
                # etcd answered: this one write is dropped, the others go on at once.
                log.warning("etcd refused the %s of %s/%s: %s", kind, service, index, exc)
                continue
            except SourceDown as exc:
                # No endpoint answered: forget it was asked, so that a later request asks again.
                key = (service, index)
                if kind == "wake":
                    self.woken.pop(key, None)
                else:
                    self.last_touch.pop(key, None)
                if not self.failing:
                    # The outage itself is logged once, at WARNING, by the source.
                    log.info("cannot write to etcd (%s): %s skipped until it answers", exc, kind)
                    self.failing = True
                gevent.sleep(backoff.next())
                continue
            if self.failing:
                log.info("writing to etcd again")
                self.failing = False
            backoff.reset()

    def _write(self, kind: str, service: str, index: str, when: float) -> None:
        if kind != "wake":
            stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(when))
            self.source.touch(self.service_dir, service, index, stamp)
            self.last_access_writes += 1
        elif self.source.wake(self.service_dir, service, index):  # compare-and-swap: once
            self.wakeups += 1
            log.info("%s/%s: passivated, asked to start", service, index)
        else:
            log.info("%s/%s: already being woken up", service, index)

    def recently_woken(self, instance: Instance) -> bool:
        """Whether this process asked `instance` to start less than WAKE_GRACE seconds ago."""
        asked = self.woken.get((instance.service, instance.index))
        return asked is not None and time.monotonic() - asked[1] < WAKE_GRACE
