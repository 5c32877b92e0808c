"""gogeta's writes to etcd (docs/behaviour.md §2.7, §5.5), queued to one background greenlet.

`lastAccess` (at most once per instance and interval) and `status/expected` to wake a
passivated instance (once until its state changes, docs/behaviour.md §3.3), written in order
through a `Source` (resolvers/source.py), best effort: a slow or dead etcd never slows a
request, a full queue drops a write rather than block one. Knows no routing policy: the
resolver (resolvers/table.py) says what to write.
"""

from __future__ import annotations

import logging
import time

import gevent
import gevent.queue

from resolvers.endpoints import Backoff
from resolvers.model import Instance, Service
from resolvers.nodes import PAUSE_EVERY, Pause, no_pause
from resolvers.source import Background, Source, SourceDown, WriteRefused

log = logging.getLogger(__name__)

QUEUE_SIZE = 10_000
WAKE_GRACE = 300.0  # seconds a woken instance keeps showing the wake-up page, not "error"


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
    ) -> None:
        self.source = source
        self.service_dir = service_dir
        self.interval = interval
        # (kind, service, index, epoch seconds): names and a number only, which the cyclic
        # collector stops tracking (thousands wait under traffic over every domain).
        self.queue: gevent.queue.Queue[tuple[str, str, str, float]] = gevent.queue.Queue(QUEUE_SIZE)
        self.last_touch: dict[tuple[str, str], float] = {}
        self.pending: set[tuple[str, str, str]] = set()
        # instance key → (the instance we asked to start, when we asked, monotonic)
        self.woken: dict[tuple[str, str], tuple[Instance, float]] = {}
        self.wakeups = 0
        self.last_access_writes = 0
        self.failing = False

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
        self.last_touch[key] = now
        self._enqueue("lastAccess", instance)

    def wake(self, instance: Instance) -> None:
        """Ask for `instance` to start, once until its state changes (docs/behaviour.md §3.3)."""
        key = (instance.service, instance.index)
        asked = self.woken.get(key)
        if asked is not None and asked[0] is instance:
            return
        self.woken[key] = (instance, time.monotonic())
        self._enqueue("wake", instance)

    def _enqueue(self, kind: str, instance: Instance) -> None:
        marker = (kind, instance.service, instance.index)
        if marker in self.pending:
            return
        try:
            self.queue.put_nowait((kind, instance.service, instance.index, time.time()))
        except gevent.queue.Full:
            return  # etcd is far behind: dropping a lastAccess beats blocking a request
        self.pending.add(marker)

    def run(self) -> None:
        backoff = Backoff()
        while True:
            kind, service, index, when = self.queue.get()
            self.pending.discard((kind, service, index))
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
