"""The background writer's waiting writes (docs/behaviour.md §2.7, §5.5), in both etcd APIs.

Under traffic over many instances, uses come faster than etcd takes writes, so writes wait.
A use the full writer had no room for is not remembered as written: the next use of that
instance asks again, and so does the next request for a wake-up it had no room for. A use
of an instance whose write still waits is the time written. The drops are counted for the
metrics. Against the session's real etcd, in process: a writer that is not started yet
stands for one that etcd keeps waiting.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Literal, TypeVar

import gevent
import pytest

from resolvers.base import Status
from resolvers.model import Instance
from resolvers.source import EtcdAccess, Source
from resolvers.writer import Writer
from tests.support import EtcdServer, wait_until

SERVICES = "/writer-test"
T = TypeVar("T")


@pytest.fixture(scope="module", params=["v2", "v3"])
def api(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def source(etcd_server: EtcdServer) -> Iterator[Source]:
    etcd_server.wipe(SERVICES)
    access = EtcdAccess((etcd_server.url,))
    if etcd_server.api == "v3":
        from resolvers.etcd3 import V3Source

        yield V3Source(access)
    else:
        from resolvers.etcd2 import V2Source

        yield V2Source(access)
    etcd_server.wipe(SERVICES)


def instance(source: Source, service: str) -> Instance:
    """An instance that exists in etcd (a lastAccess never creates one)."""
    source.put(f"{SERVICES}/{service}/1/location", '{"host": "127.0.0.1", "port": 1}')
    return Instance(service, "1", Status.STARTED, None, None, None)


def passivated(source: Source, service: str) -> Instance:
    """An instance that exists in etcd, passivated there: a wake-up may start it."""
    found = instance(source, service)
    source.put(f"{SERVICES}/{service}/1/status/expected", "passivated")
    return found


def soon(condition: Callable[[], T | Literal[False] | None], what: str) -> T:
    """What `condition` returns once truthy, the writer's greenlet running while this one
    waits."""

    def ready() -> T | Literal[False] | None:
        gevent.sleep(0.01)
        return condition()

    return wait_until(ready, what=what)


def last_access(source: Source, service: str) -> str | None:
    return source.get(f"{SERVICES}/{service}/1/lastAccess")


def written(writer: Writer, source: Source, service: str) -> str:
    """The lastAccess of `service`, once the writer has nothing left waiting."""
    return soon(
        lambda: last_access(source, service) if not writer.waiting else None,
        f"the lastAccess of {service}",
    )


def test_a_use_the_full_writer_drops_is_asked_again_by_the_next_use(source: Source) -> None:
    first, second = instance(source, "first"), instance(source, "second")
    writer = Writer(source, SERVICES, interval=3600, capacity=1)
    writer.touch(first)
    writer.touch(second)  # no room: dropped
    assert (len(writer.waiting), writer.dropped) == (1, 1)
    writer.start()
    try:
        written(writer, source, "first")
        assert last_access(source, "second") is None
        # Nothing of `second` was written: its next use is not held back by the interval.
        writer.touch(second)
        assert len(writer.waiting) == 1
        written(writer, source, "second")
    finally:
        writer.stop()
    assert writer.dropped == 1


def test_a_use_while_its_write_waits_is_the_time_written(source: Source) -> None:
    used = instance(source, "used")
    writer = Writer(source, SERVICES, interval=0)
    writer.touch(used)
    first = time.time()
    # lastAccess is written to the second: the next use comes in a later one.
    wait_until(lambda: int(time.time()) > int(first), what="the next second")
    before_again = time.time()
    writer.touch(used)
    assert len(writer.waiting) == 1  # one write, not two
    writer.start()
    try:
        stamp = written(writer, source, "used")
    finally:
        writer.stop()
    assert stamp >= time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(before_again))
    assert writer.last_access_writes == 1


def test_a_wake_up_the_full_writer_drops_is_asked_again_by_the_next_request(
    source: Source,
) -> None:
    busy, sleeping = instance(source, "busy"), passivated(source, "sleeping")
    writer = Writer(source, SERVICES, interval=3600, capacity=1)
    writer.touch(busy)
    writer.wake(sleeping)  # no room: dropped, and not taken as asked
    assert (len(writer.waiting), writer.dropped) == (1, 1)
    assert not writer.recently_woken(sleeping)
    writer.start()
    try:
        written(writer, source, "busy")
        writer.wake(sleeping)
        assert writer.recently_woken(sleeping)
        soon(
            lambda: source.get(f"{SERVICES}/sleeping/1/status/expected") == "started",
            "the wake-up written",
        )
    finally:
        writer.stop()
    assert writer.wakeups == 1


class Busy:
    """A greenlet that keeps the loop from ever being idle (a callback always ready), as
    requests that never stop coming do, until `stop`."""

    def __init__(self) -> None:
        self.running = True
        self.greenlet = gevent.spawn(self._spin)

    def _spin(self) -> None:
        while self.running:
            gevent.sleep(0)

    def stop(self) -> None:
        self.running = False
        self.greenlet.join()


def test_a_lastaccess_write_waits_until_the_loop_has_nothing_else_to_do(source: Source) -> None:
    used = instance(source, "used")
    writer = Writer(source, SERVICES, interval=3600, idle_wait=3600)
    writer.touch(used)
    busy = Busy()
    writer.start()
    try:
        deadline = time.monotonic() + 2
        while writer.last_access_writes == 0 and time.monotonic() < deadline:
            gevent.sleep(0.01)
        assert writer.last_access_writes == 0  # requests first
        assert len(writer.waiting) == 1
        busy.stop()
        written(writer, source, "used")
    finally:
        busy.stop()
        writer.stop()


def test_a_loop_never_idle_still_gets_its_lastaccess_written(source: Source) -> None:
    used = instance(source, "used")
    writer = Writer(source, SERVICES, interval=3600)  # the default wait for an idle loop
    writer.touch(used)
    busy = Busy()
    writer.start()
    try:
        soon(lambda: writer.last_access_writes == 1, "the lastAccess written")
        assert busy.running and last_access(source, "used") is not None
    finally:
        busy.stop()
        writer.stop()


def test_a_wake_up_goes_before_waiting_lastaccess_writes_and_does_not_wait_for_idle(
    source: Source,
) -> None:
    used, sleeping = instance(source, "used"), passivated(source, "sleeping")
    writer = Writer(source, SERVICES, interval=3600, idle_wait=3600)
    writer.touch(used)
    writer.wake(sleeping)
    busy = Busy()
    writer.start()
    try:
        soon(lambda: writer.wakeups == 1, "the wake-up written")
        assert source.get(f"{SERVICES}/sleeping/1/status/expected") == "started"
        assert writer.last_access_writes == 0 and len(writer.waiting) == 1
        busy.stop()
        written(writer, source, "used")
    finally:
        busy.stop()
        writer.stop()
